"""Intervals and paired tests: calibration under a null, power, exact degenerate cases, and the
sufficient statistics by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mauve.compute_mauve import get_divergence_curve_for_multinomials
from sklearn.metrics import auc

from analysis import mauve, stats
from analysis.diversity import diversity_metrics, ngram_counts, ngram_statistics, ngrams
from analysis.mauve import MauveConfig, mauve_of_histograms, mauve_swap_test
from analysis.stats import (
    BootstrapConfig,
    bootstrap,
    compare,
    holm,
    permutation_p,
    ratio,
    resample_counts,
    sign_flips,
)
from analysis.uncertainty import PARTS, BaselineConfig, add_uncertainty, compare_rows


def parts(values: np.ndarray) -> np.ndarray:
    """Per-prompt sums of a per-text mean: [value, count]."""
    return np.stack([values, np.ones_like(values)], 1)


def test_the_paired_test_holds_its_level_under_a_null_and_finds_a_planted_difference():
    rng = np.random.default_rng(0)
    prompts, repeats = 40, 200
    counts = resample_counts(prompts, 400, 1)
    rejected = {0.0: 0, 0.8: 0}
    for repeat in range(repeats):
        flips = sign_flips(prompts, 999, repeat)
        prompt_effect = rng.normal(size=prompts)  # prompts differ; configurations do not
        for shift in rejected:
            a = prompt_effect + rng.normal(size=prompts)
            b = prompt_effect + rng.normal(size=prompts) + shift
            result = compare(parts(b), parts(a), ratio, counts, flips, 0.95)
            rejected[shift] += result.p < 0.05
    assert rejected[0.0] / repeats <= 0.08
    assert rejected[0.8] / repeats >= 0.9


def test_identical_configurations_give_delta_zero_and_p_one_exactly():
    rng = np.random.default_rng(1)
    a = np.stack([rng.integers(0, 9, 30), rng.integers(9, 20, 30)] * 3, 1).astype(float)
    counts, flips = resample_counts(30, 500, 0), sign_flips(30, 500, 0)
    for metric in ("diversity", "rep_2", "coherence", "perplexity"):
        stat = PARTS[metric][1]
        result = compare(a, a.copy(), stat, counts, flips, 0.95)
        assert (result.delta, result.low, result.high, result.p) == (0.0, 0.0, 0.0, 1.0)


def test_intervals_contain_the_point_and_shrink_as_one_over_root_n():
    rng = np.random.default_rng(2)
    widths = []
    for n in (400, 200):
        values = parts(rng.exponential(size=n))
        point, low, high = bootstrap(values, ratio, resample_counts(n, 4000, 0), 0.95)
        assert low < point < high
        widths.append(high - low)
    assert widths[1] / widths[0] == pytest.approx(np.sqrt(2), rel=0.2)


def test_ngram_sufficient_statistics_by_hand():
    # "a b a b a": 2-grams 2 unique of 4, 3-grams 2 of 3, 4-grams 2 of 2; "c d": 1 of 1.
    counts = ngram_counts(["a b a b a", "c d"])
    assert counts.tolist() == [[2, 4, 2, 3, 2, 2], [1, 1, 0, 0, 0, 0]]
    sums = counts.sum(0)
    diversity = PARTS["diversity"][1](sums)
    assert diversity == pytest.approx((3 / 5) * (2 / 3) * 1.0)
    assert diversity == pytest.approx(diversity_metrics(["a b a b a", "c d"])["diversity"])
    assert PARTS["rep_3"][1](sums[2:4]) == pytest.approx(100 * (1 - 2 / 3))


def test_holm_by_hand():
    adjusted = holm(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])


def test_mauve_of_histograms_is_mauve_texts_area():
    rng = np.random.default_rng(3)
    weights = np.linspace(1e-6, 1 - 1e-6, 25)
    for _ in range(5):
        p, q = rng.dirichlet(np.ones(8)), rng.dirichlet(np.ones(8) * 0.3)
        x, y = get_divergence_curve_for_multinomials(p, q, weights, 5.0).T
        i, j = np.argsort(x), np.argsort(y)
        reference = 0.5 * (auc(x[i], y[i]) + auc(y[j], x[j]))
        assert mauve_of_histograms(p, q[None], 5.0)[0] == pytest.approx(reference, abs=1e-9)


def test_the_mauve_swap_test_is_exact_for_identical_texts_and_finds_a_shift():
    rng = np.random.default_rng(4)
    human = rng.normal(size=(60, 8))
    same = rng.normal(size=(60, 8))
    flips = sign_flips(60, 500, 0)
    cfg = MauveConfig(kmeans_seeds=1)
    delta, p = mauve_swap_test(human, same, same.copy(), np.arange(60), cfg, flips)
    assert (delta, p) == (0.0, 1.0)
    shifted = same + 2.0
    delta, p = mauve_swap_test(human, same, shifted, np.arange(60), cfg, flips)
    assert delta < 0 and p < 0.01


def texts(values: np.ndarray, seeds: list[int]) -> pd.DataFrame:
    """per_text rows of one configuration: ``values [prompts, seeds]`` of a per-text mean."""
    prompts = np.arange(values.shape[0])
    return pd.DataFrame({"prompt_id": np.repeat(prompts, len(seeds)),
                         "seed": np.tile(seeds, len(prompts)),
                         "coherence": values.ravel()})


def test_unequal_seed_sets_hold_the_level_under_a_null_and_find_a_planted_difference():
    """One row with 1 seed against one with 3 (greedy against a sampled baseline, or a seed
    added by a resume): compared on their common pairs, the sign-flip test keeps its level
    whatever the prompt effect."""
    rng = np.random.default_rng(5)
    prompts, repeats = 60, 200
    cfg = BootstrapConfig(samples=300)
    rejected = {(sd, shift): 0 for sd in (0.0, 1.0) for shift in (0.0, 1.0)}
    for repeat in range(repeats):
        cfg.seed = repeat
        for sd, shift in rejected:
            effect = rng.normal(scale=sd, size=(prompts, 1))
            base = texts(effect + rng.normal(size=(prompts, 3)), [0, 1, 2])
            row = texts(effect + shift + rng.normal(size=(prompts, 1)), [0])
            result = compare_rows(row, base, "coherence", cfg, samples_test=499)
            assert (result.pairs, result.prompts) == (prompts, prompts)
            rejected[sd, shift] += result.p < 0.05
    for sd in (0.0, 1.0):
        # nor far below it: comparing whole seed blocks rejected 8% (sd 0) and 1% (sd 1) here
        assert 0.02 <= rejected[sd, 0.0] / repeats <= 0.08, rejected
        assert rejected[sd, 1.0] / repeats >= 0.9, rejected


def test_a_row_equal_to_the_baselines_seed_0_gives_delta_zero_and_p_one_exactly():
    rng = np.random.default_rng(6)
    base = texts(rng.normal(size=(30, 3)), [0, 1, 2])
    base["u2"], base["t2"] = rng.integers(0, 9, len(base)), rng.integers(9, 20, len(base))
    row = base[base["seed"] == 0].copy()
    for metric in ("coherence", "rep_2"):
        result = compare_rows(row, base, metric, BootstrapConfig(samples=500))
        assert (result.delta, result.low, result.high, result.p) == (0.0, 0.0, 0.0, 1.0)
        assert (result.pairs, result.prompts) == (30, 30)


def test_null_replicates_without_a_value_count_as_extreme():
    assert permutation_p(np.array([np.nan, 0.1, 5.0, -0.2]), 1.0) == pytest.approx(3 / 5)
    assert permutation_p(np.array([np.nan, np.nan]), 0.0) == 1.0


def test_the_mauve_swap_test_in_chunks_equals_it_at_once(monkeypatch):
    rng = np.random.default_rng(7)
    human, base = rng.normal(size=(40, 8)), rng.normal(size=(80, 8))
    method = base + rng.normal(scale=0.7, size=base.shape)
    flips, cfg = sign_flips(40, 300, 0), MauveConfig(kmeans_seeds=1)
    whole = mauve_swap_test(human, base, method, np.tile(np.arange(40), 2), cfg, flips)
    monkeypatch.setattr(mauve, "CHUNK", 80 * 7)  # replicates 7 at a time (CHUNK // labels)
    chunked = mauve_swap_test(human, base, method, np.tile(np.arange(40), 2), cfg, flips)
    assert chunked == whole


def test_pairs_are_exact_for_any_seed():
    """The (prompt, seed) key is exact: seeds past 2^20 neither collide with nor pair with
    others (the packed key took seed 1,048,576 for seed 0 of the next prompt's block)."""
    rng = np.random.default_rng(8)
    values = rng.normal(size=(20, 2))
    base = texts(values, [0, 20260101])
    row = texts(values + 0.5, [0, 20260101])
    result = compare_rows(row, base, "coherence", BootstrapConfig(samples=200))
    assert (result.pairs, result.prompts) == (40, 20)
    assert result.delta == pytest.approx(0.5)
    far = texts(values[:, :1], [1_048_576])  # shares no seed with a baseline at seed 0
    with pytest.raises(ValueError, match="no \\(prompt, seed\\) pair in common"):
        compare_rows(far, texts(values[:, :1], [0]), "coherence", BootstrapConfig(samples=200))
    big = texts(values, [2**40, 2**40 + 1])
    assert compare_rows(big, big.copy(), "coherence", BootstrapConfig(samples=200)).pairs == 40


def study_texts(rng: np.random.Generator) -> pd.DataFrame:
    """per_text.csv of three configurations, the study's shape in small: 30 prompts, a 3-seed
    baseline, a 3-seed row, a 1-seed row (greedy-like) and one identical to the baseline;
    n-gram counts, a mean and a pooled ratio."""
    frames = []
    effect = rng.normal(size=(30, 1))
    for config, seeds, shift in (("base", [0, 1, 2], 0.0), ("row", [0, 1, 2], 0.3),
                                 ("one", [0], -0.2), ("same", [0, 1, 2], 0.0)):
        frame = texts(effect + shift + rng.normal(size=(30, len(seeds))), seeds)
        total = rng.integers(20, 40, len(frame)).astype(float)
        frame = frame.assign(config=config, method="top_k" if config == "base" else "top_p",
                             top_k=10.0 if config == "base" else np.nan, references="r",
                             t2=total, u2=np.minimum(total, rng.binomial(total.astype(int), 0.9)),
                             ll_sum=-rng.uniform(50, 150, len(frame)), ll_tokens=48.0)
        frames.append(frame)
    frames[3][["coherence", "t2", "u2", "ll_sum"]] = frames[0][
        ["coherence", "t2", "u2", "ll_sum"]].to_numpy()
    return pd.concat(frames, ignore_index=True)


def test_the_tables_shared_products_equal_each_comparison_on_its_own():
    """add_uncertainty draws each resample matrix once and multiplies it with every row's sums
    at once: its intervals, Δs and p-values equal compare_rows / bootstrap per (row, metric),
    up to float32 rounding of the sums, and the row identical to the baseline is exact."""
    per_text = study_texts(np.random.default_rng(9))
    summary = per_text.groupby("config", sort=False).first()[["method", "top_k", "references"]]
    summary = summary.reset_index().assign(n=1)
    cfg = BootstrapConfig(samples=400, seed=3)
    table, _ = add_uncertainty(summary, per_text, [], MauveConfig(), cfg, BaselineConfig(),
                               ["top_k"])
    table = table.set_index("config")
    samples_test = 400  # the table's: B, more than 20 x its tests
    for config in ("row", "one", "same"):
        for metric in ("rep_2", "coherence", "perplexity"):
            alone = compare_rows(per_text[per_text["config"] == config],
                                 per_text[per_text["config"] == "base"], metric, cfg,
                                 samples_test)
            got = table.loc[config]
            assert got[f"delta_{metric}"] == pytest.approx(alone.delta, rel=1e-12, abs=1e-15)
            for mine, theirs in ((got[f"delta_{metric}_lo"], alone.low),
                                 (got[f"delta_{metric}_hi"], alone.high),
                                 (got[f"se_{metric}"], alone.se)):
                assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-9), (config, metric)
            assert got[f"p_{metric}"] == pytest.approx(alone.p, abs=2 / samples_test)
    same = table.loc["same"]
    assert (same["delta_rep_2"], same["delta_rep_2_lo"], same["p_rep_2"]) == (0.0, 0.0, 1.0)
    rows = per_text[per_text["config"] == "row"]
    sums = rows.assign(texts=1.0).groupby("prompt_id")[["coherence", "texts"]].sum().to_numpy()
    _, low, high = bootstrap(sums, ratio, resample_counts(30, 400, 3), 0.95)
    assert (table.loc["row", "coherence_lo"], table.loc["row", "coherence_hi"]) == (
        pytest.approx(low, rel=1e-5), pytest.approx(high, rel=1e-5))


def test_resample_matrices_drawn_block_by_block_are_the_whole_draw(monkeypatch):
    whole = (np.random.default_rng(4).multinomial(50, np.full(50, 1 / 50), size=33),
             np.random.default_rng(5).integers(0, 2, size=(33, 50)))
    monkeypatch.setattr(stats, "BLOCK", 50 * 4)  # 4 rows a block, the last one short
    assert (stats.resample_counts(50, 33, 4) == whole[0]).all()
    assert (stats.sign_flips(50, 33, 4) == whole[1]).all()
    assert stats.resample_counts(50, 33, 4).dtype == np.float32
    parts = np.random.default_rng(6).normal(size=(50, 3))
    assert np.allclose(stats.resampled(stats.count_blocks(50, 33, 4), parts),
                       whole[0] @ parts, rtol=1e-5)


@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "ab", "é"]), max_size=9),
                max_size=6), st.booleans())
@settings(max_examples=200, deadline=None)
def test_ngrams_numbered_once_count_what_python_sets_count(texts_words, skip_last):
    """Every count of ngram_statistics against the definition with tuples and sets."""
    texts_ = [" ".join(words) for words in texts_words]
    counts, metrics = ngram_statistics(texts_, skip_last)
    split = [t.split() for t in texts_]
    for row, words in enumerate(split):
        for column, n in enumerate((2, 3, 4)):
            grams = ngrams(words, n, skip_last)
            assert counts[row, 2 * column : 2 * column + 2].tolist() == [len(set(grams)),
                                                                         len(grams)]
    for n in (1, 2, 3, 4):
        grams = [g for words in split for g in ngrams(words, n)]
        expected = len(set(grams)) / len(grams) if grams else math.nan
        assert metrics[f"distinct_{n}"] == pytest.approx(expected, nan_ok=True)
    for n in (2, 3, 4):
        unique, total = counts[:, 2 * n - 4].sum(), counts[:, 2 * n - 3].sum()
        expected = 100 * (1 - unique / total) if total else math.nan
        assert metrics[f"rep_{n}"] == pytest.approx(expected, nan_ok=True)
