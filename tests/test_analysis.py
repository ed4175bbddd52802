"""Metrics against hand-computed values, and the whole path on a tiny sweep."""

import copy
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from analysis import features
from analysis.__main__ import analyse, load_config
from analysis.diversity import diversity_metrics
from analysis.mauve import MauveConfig, mauve_scores
from analysis.outputs import STAGING
from analysis.uncertainty import (
    DELTA_MAUVE,
    DESCRIPTIVE,
    OUTCOMES,
    AmbiguousBaseline,
    BaselineConfig,
    BaselineNotFound,
    check_baseline,
    detectable,
    minimum_detectable,
)
from harness.sweep import main as run_sweep
from tests.conftest import ROOT, TINY


def test_rep_n_and_diversity_by_hand():
    # "a b a b a": 2-grams ab ba ab ba -> 2 unique of 4; 3-grams aba bab aba -> 2 of 3;
    # 4-grams abab baba -> 2 of 2. "c d": 2-grams cd -> 1 of 1; no 3- or 4-grams.
    m = diversity_metrics(["a b a b a", "c d"])
    assert m["rep_2"] == pytest.approx(100 * (1 - 3 / 5))
    assert m["rep_3"] == pytest.approx(100 * (1 - 2 / 3))
    assert m["rep_4"] == pytest.approx(0.0)
    assert m["diversity"] == pytest.approx((3 / 5) * (2 / 3) * 1.0)
    # distinct-n over the corpus: 1-grams a b a b a c d -> 4 unique of 7
    assert m["distinct_1"] == pytest.approx(4 / 7)
    assert m["distinct_2"] == pytest.approx(3 / 5)


def test_simctg_mode_skips_each_texts_last_ngram():
    # SimCTG counts 2-grams ab ba ab (not the final ba): 2 unique of 3.
    m = diversity_metrics(["a b a b a"], skip_last_ngram=True)
    assert m["rep_2"] == pytest.approx(100 * (1 - 2 / 3))


def test_diversity_of_nothing_is_nan_not_a_crash():
    m = diversity_metrics(["", "one"])
    assert math.isnan(m["rep_2"]) and m["distinct_1"] == 1.0


def test_mauve_is_one_on_identical_features_and_small_on_shifted_ones():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(300, 16))
    cfg = MauveConfig(kmeans_seeds=2)
    assert np.mean(mauve_scores(p, p.copy(), cfg)) > 0.99
    assert np.mean(mauve_scores(p, p + 3.0, cfg)) < 0.1


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    run_sweep(["seed_comparison", *TINY, "dataset.limit=12", "generation.seeds=[0,1]",
               "generation.max_new_tokens=40", f"hydra.sweep.dir={out}"])
    return out


def config(*extra: str):
    return load_config(["metrics.coherence.scorer=tiny", "metrics.mauve.kmeans_seeds=2",
                        "wandb=disabled", *extra])


def test_analysis_of_a_tiny_sweep_writes_the_table(tiny_sweep):
    summary = analyse([tiny_sweep], config())
    assert list(summary["method"]) == ["greedy", "locally_typical", "locally_typical",
                                       *["locally_typical_distance"] * 4, "min_p", "top_k",
                                       "top_p", "typical", "human"]
    for column in ("method", "alpha", "top_k", "n", "mauve", "mauve_std", "diversity", "rep_2",
                   "rep_3", "rep_4", "distinct_2", "coherence", "coherence_ll", "perplexity",
                   "mean_tokens", "eos_rate", "topk_identical_rate"):
        assert column in summary, column
    runs = summary[summary["method"] != "human"]
    assert runs["mauve"].between(0, 1).all()
    assert (runs["n"] == [12] + [24] * 10).all()  # greedy: one seed; the others: two
    for name in ("summary.csv", "summary.md", "summary.tex", "per_seed.csv"):
        assert (tiny_sweep / name).stat().st_size > 0
    assert (tiny_sweep / "plots" / "mauve_vs_diversity.png").exists()
    per_seed = pd.read_csv(tiny_sweep / "per_seed.csv")
    top_k = per_seed[per_seed["method"] == "top_k"]
    assert sorted(top_k["seed"]) == [0, 1]
    texts = pd.read_csv(tiny_sweep / "per_text.csv")
    sums = texts[texts["method"] == "top_k"][["u2", "t2", "u3", "t3", "u4", "t4"]].sum()
    assert summary[summary["method"] == "top_k"]["diversity"].iloc[0] == pytest.approx(
        sums["u2"] / sums["t2"] * sums["u3"] / sums["t3"] * sums["u4"] / sums["t4"])  # pooled
    # Every metric with an interval around it; Δs against top_k; per-text drill-down.
    for metric in ("diversity", "rep_2", "coherence", "perplexity", "mean_tokens"):
        inside = summary[metric].between(summary[f"{metric}_lo"] - 1e-9,
                                         summary[f"{metric}_hi"] + 1e-9)
        assert inside[summary[f"{metric}_lo"].notna()].all() and summary[f"{metric}_lo"].notna(
            ).sum() >= 11, metric
    same_as_top_k = summary[(summary["method"] == "locally_typical_distance")
                            & (summary["alpha"] <= 0.7)]  # the tiny model's entropy is high
    for metric in ("mauve", "diversity", "coherence", "perplexity", "mean_tokens"):
        assert (same_as_top_k[f"delta_{metric}"] == 0).all(), metric
        assert (same_as_top_k[f"p_{metric}"] == 1).all(), metric
    assert summary.loc[summary["method"] == "top_k", "delta_diversity"].isna().all()  # baseline
    # A Δ is the difference of the two cells shown, where both rows have the same seeds;
    # greedy (seed 0 only) is compared on the baseline's seed-0 texts and marked.
    base = summary[summary["method"] == "top_k"].iloc[0]
    same_seeds = runs[(runs["method"] != "top_k") & (runs["seeds"] == 2)]
    for metric in ("diversity", "rep_2", "coherence", "perplexity", "mean_tokens", "eos_rate"):
        assert np.allclose(same_seeds[f"delta_{metric}"], same_seeds[metric] - base[metric],
                           rtol=1e-12, atol=1e-12), metric
    assert (same_seeds["delta_subset"] == 0).all()
    greedy = summary[summary["method"] == "greedy"].iloc[0]
    assert greedy["delta_subset"] == 1 and greedy["n"] == 12
    per_text = pd.read_csv(tiny_sweep / "per_text.csv")
    assert {"job", "prompt_id", "seed", "num_tokens", "coherence", "ll_sum", "ll_tokens", "u2",
            "t2", "u4", "t4"} <= set(per_text)
    top_k_texts = per_text[per_text["method"] == "top_k"]
    assert len(top_k_texts) == 24
    pooled = top_k_texts[["u2", "t2"]].sum()
    assert summary.loc[summary["method"] == "top_k", "rep_2"].iloc[0] == pytest.approx(
        100 * (1 - pooled["u2"] / pooled["t2"]))
    markdown = (tiny_sweep / "summary.md").read_text()
    assert "Δ diversity" in markdown and "Holm" in markdown and "Minimum detectable" in markdown
    assert "†" in markdown and "pairs both rows have" in markdown and "95% percentile" in markdown
    # every MAUVE is one seed's 12 texts: the small-sample warning names that n, not 24
    assert "as few as 12" in markdown
    # alpha <= 0.3 of the scaling form is top_k exactly (diagnostics say so).
    tau = summary[(summary["method"] == "locally_typical_distance") & (summary["alpha"] == 0.2)]
    assert tau["topk_identical_rate"].iloc[0] >= runs[runs["method"] == "top_k"][
        "topk_identical_rate"].iloc[0] - 1e-9


def test_another_baseline_and_level_as_the_readme_shows(tiny_sweep):
    summary = analyse([tiny_sweep], config("baseline.method=top_p", "baseline.params.top_p=0.95",
                                           "bootstrap.level=0.9"))
    top_p = summary["method"] == "top_p"
    assert summary.loc[top_p, "delta_diversity"].isna().all()
    assert summary.loc[~top_p & (summary["method"] != "human"), "delta_diversity"].notna().all()
    markdown = (tiny_sweep / "summary.md").read_text()
    assert "against top_p" in markdown and "90% percentile" in markdown
    readme = (ROOT / "README.md").read_text()
    assert "baseline.method=top_p baseline.params.top_p=0.95" in " ".join(readme.split())


def test_holm_runs_over_the_outcome_metrics_and_one_minimum_detectable_delta_is_shown(
        tiny_sweep):
    summary = analyse([tiny_sweep], config())
    holm = {c.removeprefix("p_").removesuffix("_holm") for c in summary if c.endswith("_holm")}
    assert holm == {m for m in OUTCOMES if f"p_{m}" in summary} and "diversity" in holm
    for metric in ("mean_tokens", "eos_rate", "topk_identical_rate"):  # descriptive: p, no Holm
        assert metric in DESCRIPTIVE and f"p_{metric}" in summary
        assert f"p_{metric}_holm" not in summary
    # m = the outcome tests only: 10 compared rows x (MAUVE, diversity, rep-2..4, coherence,
    # coherence_ll, perplexity)
    assert int(summary[[f"p_{m}_holm" for m in holm]].notna().sum().sum()) == 10 * 8
    markdown = (tiny_sweep / "summary.md").read_text()
    assert "over all 80 tests of the outcome metrics" in markdown
    assert "mean_tokens, eos_rate" in markdown and "unadjusted and never starred" in markdown
    assert DELTA_MAUVE in markdown.splitlines()[0]  # the Δ MAUVE column says what it is
    # one minimum detectable Δ (rows identical to the baseline, SE 0, left out), in summary.md
    # and in summary.tex's caption alike
    runs = summary[summary["se_diversity"] > 0]
    expected = 2.8 * np.median(runs["se_diversity"]) * 100
    assert minimum_detectable(summary, "diversity") * 100 == pytest.approx(expected)
    shown = detectable(summary, "diversity", 100)
    assert shown == f"{expected:.3g}" and float(shown) > 0
    assert f"diversity {shown}" in markdown
    assert f"Diversity {shown}" in (tiny_sweep / "summary.tex").read_text()


def test_a_minimum_detectable_delta_from_a_pilot_without_variance_is_not_estimable():
    summary = pd.DataFrame({"se_coherence": [0.0, 0.0, np.nan], "se_diversity": [0.0, 0.1, 0.3]})
    assert detectable(summary, "coherence") == "not estimable"  # not 0: nothing is known
    assert math.isnan(minimum_detectable(summary, "coherence"))
    assert detectable(summary, "diversity", 100) == f"{2.8 * 0.2 * 100:.3g}"  # zeros left out


def test_a_baseline_that_names_several_rows_is_an_error_listing_them(tiny_sweep):
    before = features.stats["embedded"]
    with pytest.raises(AmbiguousBaseline, match=(
            r"baseline\.method=locally_typical_distance names 4 rows of one reference group: "
            r"baseline\.method=locally_typical_distance [^;]*baseline\.params\.alpha=0\.2 .*"
            r"baseline\.params\.alpha=1 ")):
        analyse([tiny_sweep], config("baseline.method=locally_typical_distance"))
    assert features.stats["embedded"] == before  # before any work
    rows = pd.DataFrame([{"method": "top_k", "top_k": 10, "config": c, "references": "r"}
                         for c in ("aaa", "bbb")])  # differing in no selector parameter
    with pytest.raises(AmbiguousBaseline, match=r"baseline\.params\.config=aaa; .*config=bbb"):
        check_baseline(rows, BaselineConfig(), ["top_k"])
    rows["references"] = ["r", "s"]  # one per reference group: each group's own baseline
    assert check_baseline(rows, BaselineConfig(), ["top_k"]) is None


def test_a_failed_analysis_leaves_the_previous_complete_set(tiny_sweep, monkeypatch):
    analyse([tiny_sweep], config())
    outputs = ["summary.csv", "summary.md", "summary.tex", "summary_full.tex", "per_seed.csv",
               "per_text.csv", "plan.csv", "plan.md", "samples.tex", "report.html"]
    plots = sorted((tiny_sweep / "plots").iterdir())
    previous = {name: (tiny_sweep / name).read_bytes() for name in outputs}
    previous.update({f"plots/{p.name}": p.read_bytes() for p in plots})

    def fail(*args, **kwargs):
        raise ValueError("failed after the summary")

    monkeypatch.setattr("analysis.__main__.write_samples", fail)
    with pytest.raises(ValueError, match="after the summary"):  # other resamples: new numbers
        analyse([tiny_sweep], config("bootstrap.seed=7"))
    assert {name: (tiny_sweep / name).read_bytes() for name in outputs} | {
        f"plots/{p.name}": p.read_bytes() for p in plots} == previous
    assert sorted((tiny_sweep / "plots").iterdir()) == plots
    assert not list(tiny_sweep.glob(f"{STAGING}*"))  # no temporary file left
    monkeypatch.undo()
    analyse([tiny_sweep], config("bootstrap.seed=7"))  # and a complete run replaces them all
    assert (tiny_sweep / "summary.csv").read_bytes() != previous["summary.csv"]
    assert not list(tiny_sweep.glob(f"{STAGING}*"))


def test_an_unknown_baseline_fails_before_the_work_and_lists_the_rows(tiny_sweep):
    before = features.stats["embedded"]
    listed = r"the rows that can be the baseline: .*baseline\.method=top_k [^;]*top_k=10"
    with pytest.raises(BaselineNotFound, match=listed):
        analyse([tiny_sweep], config("baseline.method=nonexistent"))
    with pytest.raises(ValueError, match="no row of the table"):
        analyse([tiny_sweep], config("baseline.params.top_k=3"))
    assert features.stats["embedded"] == before


def test_a_missing_default_baseline_is_said_under_the_table():
    rows = pd.DataFrame([{"method": "top_p", "top_p": 0.95}, {"method": "top_k", "top_k": 20}])
    note = check_baseline(rows, BaselineConfig(), ["top_p", "top_k"])
    assert "default baseline (baseline.method=top_k baseline.params.top_k=10) is not" in note
    assert "baseline.method=top_k baseline.params.top_k=20" in note
    assert check_baseline(rows, BaselineConfig("top_p", {"top_p": 0.95}), ["top_p"]) is None


def test_second_analysis_does_no_featurization(tiny_sweep):
    analyse([tiny_sweep], config())
    before = features.stats["embedded"]
    analyse([tiny_sweep], config())
    assert features.stats["embedded"] == before


def test_a_job_without_generations_is_skipped_and_the_rest_analysed(tiny_sweep, tmp_path):
    broken = tiny_sweep / "top_k,broken"
    broken.mkdir()
    (broken / "job.yaml").write_text((next(tiny_sweep.glob("top_k,*/job.yaml"))).read_text())
    (broken / "generations.jsonl").write_bytes(b"")  # a job stopped before its first record
    try:
        summary = analyse([tiny_sweep], config())
        markdown = (tiny_sweep / "summary.md").read_text()
    finally:
        for path in broken.iterdir():
            path.unlink()
        broken.rmdir()
    assert len(summary) == 12
    note = next(line for line in markdown.splitlines() if "with no generations" in line)
    assert "1 job dir(s)" in note and str(broken) in note  # under the table, not just a log


def test_missing_sweep_dir_and_unknown_featurizer_are_clear(tiny_sweep, tmp_path):
    bad = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "does not exist" in bad.stderr
    summary = analyse([tiny_sweep], config("metrics.mauve.featurizer=nonsense"))
    assert "mauve" not in summary and len(summary) == 12  # every job still has its row
    assert summary["coherence"].notna().all() and summary["diversity"].notna().all()
    summary = analyse([tiny_sweep], config("metrics.coherence.embedder=nonsense"))
    assert "coherence" not in summary and summary["mauve"].iloc[:-1].notna().all()


def test_wandb_offline_runs_land_in_the_sweep_dir(tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    args = [*[a for a in TINY if a != "wandb=disabled"], "wandb=offline", "dataset.limit=4",
            "generation.seeds=[0]", f"hydra.sweep.dir={out}"]
    done = subprocess.run([sys.executable, "-m", "harness", "-m", "selector=top_k", *args],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    job = next(out.glob("top_k*"))
    run_id = (job / "wandb_run_id").read_text()
    analysed = subprocess.run([sys.executable, "-m", "analysis", str(out),
                               "metrics.coherence.scorer=tiny", "metrics.mauve.kmeans_seeds=1"],
                              capture_output=True, text=True, cwd=tmp_path, env=env)
    assert analysed.returncode == 0, analysed.stderr
    runs = list((out / "wandb").glob("offline-run-*"))
    assert any(r.name.endswith(run_id) for r in runs)  # the generation run, with its metrics
    assert len(runs) == 2  # + the analysis run; the write-back replaced the earlier folder
    assert all(list(r.glob("*.wandb")) for r in runs)


def test_shards_are_merged_into_one_row(tmp_path):
    from harness.runner import run_job
    from tests.conftest import compose

    for shard in range(2):
        cfg = compose(*TINY, "dataset.limit=10", "generation.seeds=[0]", "selector=top_k",
                      f"dataset.shard={shard}", "dataset.num_shards=2")
        run_job(cfg, tmp_path / f"top_k,shard={shard}")
    summary = analyse([tmp_path], config())
    assert list(summary["method"]) == ["top_k", "human"]
    assert list(summary["n"]) == [10, 10]


def test_all_empty_continuations_leave_mauve_blank_not_a_crash():
    from analysis.table import text_metrics

    row = text_metrics(["a prompt"] * 3, ["", " ", ""], ["x y z"] * 3, config().metrics, None,
                       "test")
    assert row["n"] == 3 and "mauve" not in row and math.isnan(row["rep_2"])


def test_jobs_with_other_reference_lengths_get_their_own_rows(tmp_path):
    from harness.runner import run_job
    from tests.conftest import compose

    for new in (8, 16):
        cfg = compose(*TINY, "dataset.limit=10", "generation.seeds=[0]", "selector=top_k",
                      f"generation.max_new_tokens={new}")
        run_job(cfg, tmp_path / f"top_k,new={new}")
    summary = analyse([tmp_path], config())
    assert list(zip(summary["method"], summary["max_new_tokens"], strict=True)) == [
        ("top_k", 8), ("top_k", 16), ("human", 8), ("human", 16)]


def test_two_prompt_lengths_are_two_rows_each_with_its_own_humans(tmp_path):
    from harness.runner import run_job
    from tests.conftest import compose

    for prompt_tokens in (16, 24):
        cfg = compose(*TINY, "selector=top_k", f"generation.prompt_tokens={prompt_tokens}",
                      "generation.max_new_tokens=16", "dataset.limit=6", "generation.seeds=[0]")
        run_job(cfg, tmp_path / f"top_k,prompt_tokens={prompt_tokens}")
    summary = analyse([tmp_path], config())
    assert list(zip(summary["method"], summary["generation.prompt_tokens"], summary["n"],
                    strict=True)) == [("top_k", 16, 6), ("top_k", 24, 6), ("human", 16, 6),
                                      ("human", 24, 6)]
    assert summary["references"].nunique() == 2
    markdown = (tmp_path / "summary.md").read_text()
    assert "generation.prompt_tokens" in markdown.splitlines()[0]


def test_dirs_that_differ_only_in_what_records_do_not_depend_on_are_one_configuration(
        tmp_path):
    import shutil

    import yaml

    from analysis.load import find_jobs
    from harness.runner import run_job
    from tests.conftest import compose

    run_job(compose(*TINY, "selector=top_k", "dataset.limit=6", "generation.seeds=[0]"),
            tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    job = yaml.safe_load((tmp_path / "b" / "job.yaml").read_text())
    job["generation"]["compile"] = True
    (tmp_path / "b" / "job.yaml").write_text(yaml.safe_dump(job))
    jobs = find_jobs([tmp_path])
    assert len(jobs) == 1 and len(jobs[0].records) == 6


def test_a_dir_with_records_but_no_job_yaml_is_named_and_counted(tmp_path):
    from analysis.load import load_notes, unidentified_dirs

    (tmp_path / "lost").mkdir()
    (tmp_path / "lost" / "generations.jsonl").write_text("{}\n")
    assert unidentified_dirs([tmp_path]) == [tmp_path / "lost"]
    (note,) = load_notes([tmp_path], [])
    assert note.startswith("Warning: 1 dir(s)") and str(tmp_path / "lost") in note


def test_every_selector_parameter_of_the_registry_is_a_column(tmp_path):
    """Configurations that differ in any one parameter of any selector are two rows, and the
    rendered table shows that parameter."""
    from analysis.load import Job
    from analysis.render import rendered
    from analysis.table import configuration, parameters, summarize
    from harness.selectors import SELECTORS, parameter_names
    from tests.conftest import compose

    for name, cls in SELECTORS.items():
        job_config = OmegaConf.to_container(compose(*TINY, f"selector={name}"), resolve=True)
        jobs = [Job(job_config)]
        for parameter in parameter_names(cls):
            other = copy.deepcopy(job_config)
            value = other["selector"][parameter]
            other["selector"][parameter] = 0.5 if value is None else value + 1
            jobs.append(Job(other))
        assert set(parameter_names(cls)) <= set(parameters(jobs)), name
        per_seed = pd.DataFrame([{**configuration(job), "seed": 0, "n": 4, "diversity": 0.5}
                                 for job in jobs])
        summary = summarize(per_seed, pd.DataFrame(), jobs)
        assert len(summary) == len(jobs), name
        assert set(parameter_names(cls)) <= set(rendered(summary)), name
