"""The sample-size plan: calibrated by simulation (a planted paired effect is found with the
planned power; no effect, no more false positives than the level), the 1/√n scaling check,
MAUVE's power law, and on a tiny sweep the plan's output and its extension command."""

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import norm

from analysis import features
from analysis.__main__ import analyse, load_config
from analysis.load import Job, find_jobs
from analysis.mauve import MauveConfig
from analysis.plan import (
    PlanConfig,
    bootstrap_se,
    extension_command,
    launches,
    paired_sums,
    power_law_n,
    prompts_needed,
    scaling_exponent,
    swap_null_sd,
    z_scores,
    z_total,
)
from analysis.stats import compare, ratio, resample_counts, sign_flips
from analysis.uncertainty import PARTS
from harness.records import RECORDS, TIMING
from harness.sweep import main as run_sweep
from tests.conftest import ROOT, TINY


def texts(values: np.ndarray, seeds: list[int]) -> pd.DataFrame:
    """Per-text statistics of a mean metric: ``values [prompts, seeds]``."""
    prompts, columns = values.shape
    return pd.DataFrame({"prompt_id": np.repeat(np.arange(prompts), columns),
                         "seed": np.tile(seeds, prompts), "coherence": values.ravel(),
                         "texts": 1.0})


def pilot_and_study(rng: np.random.Generator, n: int, effect: float,
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A 3-seed baseline and a 1-seed row (only seed 0 is paired), prompts differing a lot, the
    row shifted by ``effect``."""
    prompt = rng.normal(0, 2, size=(n, 1))
    base = prompt + rng.normal(size=(n, 3))
    row = prompt + rng.normal(size=(n, 1)) + effect
    return texts(row, [0]), texts(base, [0, 1, 2])


@pytest.mark.parametrize("tests", [1, 10])
def test_planned_n_gives_the_planned_power_and_no_effect_stays_at_the_level(tests):
    rng = np.random.default_rng(tests)
    columns, stat = PARTS["coherence"]
    delta, repeats, z = 0.5, 200, z_scores(tests, 0.8)
    level = 0.05 / tests
    rejected = {delta: 0, 0.0: 0}
    planned = []
    for repeat in range(repeats):
        n = prompts_needed(bootstrap_se(*paired_sums(*pilot_and_study(rng, 24, 0.0), columns),
                                        stat, 2000, repeat), 24, delta, *z)
        planned.append(n)
        for effect in rejected:
            a, b = paired_sums(*pilot_and_study(rng, n, effect), columns)
            result = compare(a, b, stat, resample_counts(n, 200, repeat),
                             sign_flips(n, int(40 / level), repeat), 0.95)
            rejected[effect] += result.p < level
    # SE(Δ) = √2/√n exactly here (σ² = 2 per prompt), so the n an oracle would plan is known.
    oracle = math.ceil(((z[0] * math.sqrt(2 + delta**2) + z[1] * math.sqrt(2)) / delta) ** 2)
    assert np.median(planned) == pytest.approx(oracle, rel=0.15)
    assert 0.70 <= rejected[delta] / repeats <= 0.90, rejected
    assert rejected[0.0] / repeats <= max(0.08 / tests, 0.02), rejected


def test_z_and_prompts_needed_by_hand():
    assert z_total(1, 0.8) == pytest.approx(norm.ppf(0.975) + norm.ppf(0.8))
    assert z_total(140, 0.9) == pytest.approx(norm.ppf(1 - 0.05 / 280) + norm.ppf(0.9))
    assert z_scores(10, 0.8) == pytest.approx((norm.ppf(1 - 0.05 / 20), norm.ppf(0.8)))
    # σ = 1 x √24; (1.96 x √(24 + 1) + 0.84 x √24)^2 = (9.8 + 4.11510)^2 = 193.63 -> 194
    assert prompts_needed(1.0, 24, 1.0, 1.96, 0.84) == 194
    # σ = 0.3 x √100 = 3, δ = 4: (2 x 5 + 2 x 3) / 4 = 4 -> n = 16, on the boundary
    assert prompts_needed(0.3, 100, 4.0, 2.0, 2.0) == 16


def test_subsampling_exponent_is_minus_one_half_on_iid_prompts():
    cfg = PlanConfig()
    rng = np.random.default_rng(3)
    for repeat in range(4):
        a = np.stack([rng.normal(1, 1, 24), np.ones(24)], 1)
        b = np.stack([rng.normal(0, 1, 24), np.ones(24)], 1)
        assert scaling_exponent(a, b, ratio, cfg, repeat) == pytest.approx(-0.5, abs=0.1)
        # a ratio metric: rep-2 of texts with i.i.d. n-gram counts
        total = rng.integers(30, 50, size=(24, 1)).astype(float)
        unique_a = np.minimum(total, rng.binomial(total.astype(int), 0.9))
        unique_b = np.minimum(total, rng.binomial(total.astype(int), 0.8))
        a, b = np.hstack([unique_a, total]), np.hstack([unique_b, total])
        exponent = scaling_exponent(a, b, PARTS["rep_2"][1], cfg, repeat)
        assert exponent == pytest.approx(-0.5, abs=0.1)


def test_pairs_are_the_ones_both_rows_have():
    row = texts(np.array([[1.0], [2.0]]), [0])
    base = texts(np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]]), [0, 1, 2])
    a, b = paired_sums(row, base, ["coherence", "texts"])
    assert a.tolist() == [[1.0, 1.0], [2.0, 1.0]]
    assert b.tolist() == [[10.0, 1.0], [40.0, 1.0]]  # seed 0 only


def test_mauve_power_law_by_hand_and_null_spread_shrinks_with_n():
    sizes, sds = [10, 20, 40], [0.5 * n ** -0.4 for n in (10, 20, 40)]
    n, exponent = power_law_n(sizes, sds, 0.02, 3.0)
    assert exponent == pytest.approx(-0.4)
    assert n == math.ceil((0.02 / 3.0 / 0.5) ** (1 / -0.4) - 1e-9)
    assert power_law_n(sizes, sds[::-1], 0.02, 3.0)[0] == -1  # sd growing: no plan
    # barely falling: n = (0.02/3/0.5)^(1/-0.01) ≈ 10^187, past int64 (and at -0.001 past
    # float range): no plan rather than an overflow in the plan's cost
    for slope in (-0.01, -0.001):
        shallow = [0.5 * n ** slope for n in sizes]
        n, exponent = power_law_n(sizes, shallow, 0.02, 3.0)
        assert (n, exponent) == (-1, pytest.approx(slope))
    rng = np.random.default_rng(4)
    cfg = MauveConfig(kmeans_seeds=2)
    spread = []
    for size in (30, 120):
        human, base, method = (rng.normal(shift, 1, size=(size, 8)) for shift in (0, 0.3, 0.3))
        spread.append(swap_null_sd(human, base, method, np.arange(size), cfg,
                                   sign_flips(size, 300, 0)))
        assert swap_null_sd(human, base, base.copy(), np.arange(size), cfg,
                            sign_flips(size, 300, 0)) == 0.0  # swapping equal texts: no spread
    assert spread[1] < spread[0]


def test_bad_plan_settings_are_named():
    with pytest.raises(ValueError, match=r"plan\.delta\.bogus"):
        PlanConfig(delta={"bogus": 2})
    assert load_config(["plan.delta.rep_2=[1,2]"]).plan.delta["rep_2"] == [1, 2]
    with pytest.raises(ValueError, match=r"plan\.delta\.diversity"):
        load_config(["plan.delta.diversity=-1"])
    with pytest.raises(ValueError, match=r"plan\.power"):
        load_config(["plan.power=1.5"])


# --- on a tiny sweep ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    """A three-job union sweep of 4 prompts x 2 seeds, launched from its own dir."""
    launch = tmp_path_factory.mktemp("launch")
    (launch / "mini.yaml").write_text(yaml.safe_dump({"grids": [
        {"selector": "top_k", "selector.top_k": 10},
        {"selector": "locally_typical_distance", "selector.alpha": 0.2, "selector.top_k": 10},
        {"selector": "top_p", "selector.top_p": 0.9}]}))
    cwd = os.getcwd()
    os.chdir(launch)
    try:
        run_sweep([str(launch / "mini.yaml"), *TINY, "dataset.limit=4", "generation.seeds=[0,1]"])
    finally:
        os.chdir(cwd)
    return launch, launch / "multirun" / "mini"


def analysis_config(*extra: str):
    return load_config(["metrics.coherence.scorer=tiny", "metrics.mauve.kmeans_seeds=2",
                        "wandb=disabled", *extra])


def test_plan_of_a_tiny_sweep(pilot):
    _, sweep = pilot
    summary = analyse([sweep], analysis_config("plan.delta.coherence=[0.01,0.02]",
                                               "plan.delta.perplexity=1"))
    plan = pd.read_csv(sweep / "plan.csv")
    assert {"method", "top_k", "top_p", "model", "dataset", "max_new_tokens", "metric", "delta",
            "n_needed", "tokens", "seconds", "command"} <= set(plan)
    assert sorted(set(plan["metric"])) == ["coherence", "perplexity"]  # only what was asked
    assert len(plan) == 2 * 3  # two rows against top_k, three δs in all
    same = plan[plan["method"] == "locally_typical_distance"]  # alpha 0.2: top_k's texts
    assert (same["status"] == "identical to baseline: no n resolves it").all()
    assert same["n_needed"].isna().all() and (same["command"].fillna("") == "").all()
    top_p = plan[plan["method"] == "top_p"].set_index(["metric", "delta"])
    p_values = [c for c in summary if c.startswith("p_") and c.endswith("_holm")]
    tests = int(summary[p_values].notna().sum().sum())  # Holm's m: the outcome metrics' tests
    jobs = find_jobs([sweep])
    timing = json.loads((jobs[0].dirs[0] / TIMING).read_text())
    assert timing["device"].startswith("cpu")
    for (_, delta), row in top_p.iterrows():
        if row["status"] != "planned":
            assert row["status"].startswith(("resolved at n = 4", "the pilot's n = 4"))
            continue
        n = int(row["n_needed"])
        assert n == prompts_needed(row["se_pilot"], 4, delta, *z_scores(tests, 0.8))
        # every job grows to n prompts with each of its seeds, at its mean length
        tokens = sum((n - 4) * 2 * np.mean([r["num_tokens"] for r in job.records])
                     for job in jobs)
        assert row["tokens"] == pytest.approx(tokens, abs=1)
        assert row["seconds"] == pytest.approx(row["tokens"] / timing["tokens_per_s"], rel=1e-6)
        assert f"dataset.limit={n}" in row["command"]
    coherence = top_p.loc["coherence"]
    if (coherence["status"] == "planned").all():  # n ∝ 1/δ², a little less (the null's δ²)
        assert 3 < coherence.loc[0.01, "n_needed"] / coherence.loc[0.02, "n_needed"] <= 4
    markdown = (sweep / "plan.md").read_text()
    assert "m = " in markdown and "identical to baseline" in markdown and "tok/s" in markdown


def test_second_analysis_with_its_plan_featurizes_nothing(pilot):
    _, sweep = pilot
    analyse([sweep], analysis_config())
    before = features.stats["embedded"]
    summary = analyse([sweep], analysis_config())
    assert features.stats["embedded"] == before
    grid = {"mauve", "diversity", "coherence", "perplexity"}  # the default grid, where the
    assert {m for m in grid if m in summary} == set(  # table has values (the tiny model's
        pd.read_csv(sweep / "plan.csv")["metric"])  # byte strings may have no word n-grams)


@pytest.mark.slow
def test_the_extension_command_keeps_the_pilot_and_adds_only_new_prompts(pilot):
    launch, sweep = pilot
    jobs = find_jobs([sweep])
    before = {d: (d / RECORDS).read_bytes() for job in jobs for d in job.dirs}
    command = extension_command(launches(jobs), 6)
    assert command.startswith("python -m harness.sweep ") and "dataset.limit=6" in command
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(command.replace("python", f"{ROOT / '.venv' / 'bin' / 'python'}", 1),
                   shell=True, cwd=launch, env=env, check=True, capture_output=True)
    for job_dir, old in before.items():
        new = (job_dir / RECORDS).read_bytes()
        assert new.startswith(old)  # every pilot record byte for byte, in place
        added = [json.loads(line) for line in new[len(old):].splitlines()]
        assert sorted((r["prompt_id"], r["seed"]) for r in added) == [
            (p, s) for p in (4, 5) for s in (0, 1)]


def test_a_plain_multirun_is_extended_with_its_own_overrides(tmp_path):
    job_dir = tmp_path / "multirun" / "adhoc" / "top_k"
    job_dir.mkdir(parents=True)
    (job_dir.parent / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {
        "hydra": ["hydra.mode=MULTIRUN", "hydra.sweep.dir=out dir"],
        "task": ["selector=top_k,greedy", "dataset.limit=4", "generation.seeds=[0,1]"]}}}))
    assert extension_command(launches([Job({}, [job_dir])]), 9) == (
        "python -m harness -m selector=top_k,greedy 'generation.seeds=[0,1]' "
        "'hydra.sweep.dir=out dir' dataset.limit=9")


def fake_job_dir(sweep: Path, name: str, task: list[str], hydra: list[str]) -> Path:
    job_dir = sweep / name
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(task))
    (job_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"overrides": {"hydra": hydra, "task": task}}}))
    return job_dir


def test_dirs_of_an_earlier_launch_into_the_sweep_dir_grow_with_their_own_overrides(tmp_path):
    """Hydra rewrites multirun.yaml at each launch: a dir that only an earlier launch ran is
    grown by a one-job multirun of its own overrides, before the last launch's command."""
    sweep = tmp_path / "multirun" / "adhoc"
    hydra = ["hydra.mode=MULTIRUN", "hydra.sweep.dir=multirun/adhoc"]
    first = fake_job_dir(sweep, "top_k", ["selector=top_k", "dataset.limit=4"], hydra)
    os.utime(first / ".hydra" / "overrides.yaml", (1, 1))  # before the second launch
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {
        "hydra": hydra, "task": ["selector=top_p,greedy", "dataset.limit=4"]}}}))
    second = fake_job_dir(sweep, "top_p", ["selector=top_p", "dataset.limit=4"], hydra)
    jobs = [Job({}, [second]), Job({}, [first])]
    assert extension_command(launches(jobs), 9) == (
        "python -m harness -m selector=top_k hydra.sweep.dir=multirun/adhoc dataset.limit=9 && "
        "python -m harness -m selector=top_p,greedy hydra.sweep.dir=multirun/adhoc "
        "dataset.limit=9")


@pytest.mark.slow
def test_a_sweep_dir_of_two_launches_grows_every_dir_in_place(tmp_path):
    """A named sweep, then a plain multirun into its dir: the plan's command grows the dirs of
    both launches, each in place (pilot bytes kept, only the new prompts added, no new dir)."""
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump({"grids": [
        {"selector": "top_k", "selector.top_k": 10}]}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    python = str(ROOT / ".venv" / "bin" / "python")
    common = [*TINY, "dataset.limit=2", "generation.seeds=[0]"]
    for args in (["-m", "harness.sweep", str(tmp_path / "mini.yaml"), *common],
                 ["-m", "harness", "-m", "sweep=mini", "selector=top_p", *common]):
        subprocess.run([python, *args], cwd=tmp_path, env=env, check=True, capture_output=True)
    sweep = tmp_path / "multirun" / "mini"
    jobs = find_jobs([sweep])
    before = {d: (d / RECORDS).read_bytes() for job in jobs for d in job.dirs}
    assert len(before) == 2
    command = extension_command(launches(jobs), 3)
    subprocess.run(command.replace("python", python), shell=True, cwd=tmp_path, env=env,
                   check=True, capture_output=True)
    assert {p.parent for p in sweep.glob(f"*/{RECORDS}")} == set(before)
    for job_dir, old in before.items():
        new = (job_dir / RECORDS).read_bytes()
        assert new.startswith(old)
        assert [json.loads(line)["prompt_id"] for line in new[len(old):].splitlines()] == [2]


def test_a_running_cluster_task_is_grown_by_its_sweep_launch(tmp_path):
    """While a fused_slurm study runs, its records are in shard dirs with no .hydra of their
    own: the plan names their job dir's launch (it failed on the missing file)."""
    sweep = tmp_path / "multirun" / "adhoc"
    shards = [sweep / "top_k" / "shards" / f"{i}-of-2" for i in range(2)]
    for shard in shards:
        shard.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {
        "hydra": ["hydra.mode=MULTIRUN", "hydra/launcher=fused_slurm"],
        "task": ["selector=top_k", "dataset.limit=4"]}}}))
    assert extension_command(launches([Job({}, shards)]), 9) == (
        "python -m harness -m selector=top_k hydra/launcher=fused_slurm dataset.limit=9")


def test_a_sweep_dir_named_shards_is_not_taken_for_a_shard(tmp_path):
    sweep = tmp_path / "shards"
    job_dir = fake_job_dir(sweep, "top_k", ["selector=top_k"], ["hydra.mode=MULTIRUN"])
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {
        "hydra": ["hydra.mode=MULTIRUN"], "task": ["selector=top_k,top_p"]}}}))
    os.utime(job_dir / ".hydra" / "overrides.yaml", (2e9, 2e9))  # written after multirun.yaml
    assert extension_command(launches([Job({}, [job_dir])]), 9) == (
        "python -m harness -m selector=top_k,top_p dataset.limit=9")


def test_a_degenerate_mauve_null_gives_no_plan_not_a_crash(pilot, monkeypatch):
    """The shape that broke the plan: one sub-sample's texts all in one cluster give a swap
    null sd of exactly 0 (log 0), or one of rounding size (an exponent of -25.7)."""
    degenerate = [0.0, 5.8e-4, 3.8e-19]
    assert power_law_n([1, 2, 4], degenerate, 0.02, 3.0)[0] == -1
    assert power_law_n([1, 2, 4], [0.02, 5.8e-4, 3.8e-19], 0.02, 3.0)[0] == -1
    n, exponent = power_law_n([1, 2, 4], [2e-2, 5.8e-4, 1e-9], 0.02, 3.0)  # far below n^-1.5
    assert n == -1 and exponent < -1.5
    monkeypatch.setattr("analysis.plan.mauve_null_fit",
                        lambda *args, **kwargs: ([1, 2, 4], degenerate))
    _, sweep = pilot
    analyse([sweep], analysis_config("plan.delta.mauve=[2,5]"))  # the run finishes
    plan = pd.read_csv(sweep / "plan.csv")
    top_p = plan[(plan["method"] == "top_p") & (plan["metric"] == "mauve")]
    assert len(top_p) == 2 and top_p["n_needed"].isna().all()
    assert top_p["status"].str.startswith("no plan: degenerate null").all(), top_p["status"]
    assert "no plan: degenerate null" in (sweep / "plan.md").read_text()


@pytest.mark.slow
def test_the_planned_n_has_the_planned_power_on_resampled_pilot_differences():
    """The issue's check: resample a pilot's per-prompt sums to the plan's n, shift its Δ to
    δ, and run the project's own paired sign-flip test at α/m (m = 80, the demo's family): the
    power is the plan's 80%. (Issue 26 measured 0.75-0.77 on the demo's pilot before the null's
    δ² entered the formula; on this bounded, skewed pilot the old n gave 0.78-0.80 and the new
    one 0.81-0.86 for δ = 1.5-3 SE, the sign-flip's tails at α/m being a little lighter than
    the normal's.)"""
    rng = np.random.default_rng(11)
    n_pilot, tests, repeats = 48, 80, 1000
    prompt = rng.beta(2, 5, size=(n_pilot, 1))  # coherence-like: bounded, skewed, per prompt
    base = texts(np.clip(prompt + rng.normal(0, 0.15, (n_pilot, 3)), 0, 1), [0, 1, 2])
    row = texts(np.clip(prompt + rng.normal(0.01, 0.2, (n_pilot, 3)), 0, 1), [0, 1, 2])
    columns, stat = PARTS["coherence"]
    a, b = paired_sums(row, base, columns)
    observed = stat(a.sum(0)) - stat(b.sum(0))
    se = bootstrap_se(a, b, stat, 4000, 0)
    delta = 1.5 * se  # a δ the pilot cannot resolve: n several times the pilot's
    n = prompts_needed(se, n_pilot, delta, *z_scores(tests, 0.8))
    assert 3 * n_pilot < n < 10 * n_pilot
    level = 0.05 / tests
    flips = sign_flips(n, int(40 / level), 0)  # resolves p down to level / 40
    counts = resample_counts(n, 10, 0)  # (the interval is not what is checked)
    found = 0
    for _ in range(repeats):
        chosen = rng.integers(0, n_pilot, n)
        shifted = a[chosen].copy()
        shifted[:, 0] += (delta - observed) * shifted[:, 1]  # each text's value + (δ - Δ)
        found += compare(shifted, b[chosen], stat, counts, flips, 0.95).p < level
    assert 0.78 <= found / repeats <= 0.85, (found / repeats, n)
