"""Intervals and paired tests: calibration under a null, power, exact degenerate cases, and the
sufficient statistics by hand."""

import numpy as np
import pandas as pd
import pytest
from mauve.compute_mauve import get_divergence_curve_for_multinomials
from sklearn.metrics import auc

from analysis import mauve
from analysis.diversity import diversity_metrics, ngram_counts
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
from analysis.uncertainty import PARTS, compare_rows


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
