"""From pilot to conclusion: how many prompts each comparison with the baseline needs, what
they cost, and the command that gets them.

For every row against its baseline, every planned metric and every δ (in the table's units):
the prompts per configuration that give ``power`` (default 80%) to a two-sided test at 5%
after the table's Holm adjustment, planned conservatively at α/m for the table's m tests
(Holm's first step; its later thresholds are looser). Only the pilot's *variances* enter,
never its observed Δ:

- SE-based metrics: SE(Δ) at n is SE_pilot · √(n_pilot / n), SE_pilot the paired bootstrap SE
  on the (prompt, seed) pairs both rows have; the sign-flip test's null at a true Δ = δ is
  wider than SE(Δ) (it flips differences whose mean is δ), which ``prompts_needed`` includes.
  The scaling is checked by sub-sampling the pilot
  (n/4, n/2, n): the fitted exponent is reported and a warning given when it is far from −½.
- MAUVE: the swap test's null sd is measured at several sub-sample sizes (each with its own
  k-means codebook, as mauve-text's recipe grows the clusters with n) and fitted by a power
  law; the plan says how far it extrapolates, and declines with fewer than 3 usable sizes.

Tokens and seconds are what the extension command costs: every job of the sweep generates the
new prompts with each of its seeds, at the sweep's own measured throughput (``timing.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis.features import disk_cached, featurize
from analysis.load import Job
from analysis.mauve import MauveConfig, mauve_swap_null
from analysis.stats import resample_counts, resampled, sign_flips
from analysis.uncertainty import PARTS, BaselineConfig, baseline_row, with_parts
from harness.records import SHARD_NAME, SHARDS, TIMING
from harness.sweep import SWEEPS

log = logging.getLogger(__name__)

ALPHA = 0.05  # the table's two-sided family-wise level (its `*`)
SCALE = {"mauve": 100, "diversity": 100}  # the table shows these x 100; δ is in table units
# With no plan.delta given: a few δs per metric the table shows a Δ of (table units).
DEFAULT_GRID = {"mauve": [2, 5, 10], "diversity": [1, 2, 5], "coherence": [0.01, 0.02, 0.05],
                "perplexity": [0.5, 1, 2]}
PLANNABLE = ["mauve", "diversity", "rep_2", "rep_3", "rep_4", "coherence", "coherence_ll",
             "perplexity", "mean_tokens", "eos_rate"]
MIN_MAUVE_TEXTS = 20  # per side: fewer make a 2-cluster histogram, not a MAUVE
EXPONENT_TOLERANCE = 0.15  # |fitted exponent + 1/2| beyond this: the 1/√n projection is suspect
# A swap-test null sd below this (MAUVE units) is no spread but rounding: all of a sub-sample's
# texts in one cluster. A fitted exponent below STEEPEST is no sampling spread either (one
# falls as n^-1/2, a spread between n^-1/2 and n^-1 at most): both leave the MAUVE plan out.
NULL_SD_FLOOR = 1e-12
STEEPEST = -1.5
DEGENERATE = "no plan: degenerate null"
# A fit that barely falls reaches δ/z only at astronomically many prompts (past int64 and
# float range): beyond this no plan is given.
MOST_PROMPTS = 10**9


@dataclass
class PlanConfig:
    """``plan`` in ``conf/analysis.yaml``."""

    power: float = 0.8
    # metric -> δ or [δ, ...] in the table's units (MAUVE, diversity x 100); all null: the
    # DEFAULT_GRID; else only the metrics given
    delta: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(PLANNABLE))
    bootstrap_samples: int = 2000  # per SE in the sub-sampling check
    subsamples: int = 16  # random prompt subsets per sub-sample size (SE metrics)
    mauve_subsamples: int = 2  # per size below the pilot's (each fits its own k-means)
    mauve_null_samples: int = 1000

    def __post_init__(self) -> None:
        deltas(self)  # a bad plan.delta or plan.power stops the analysis before it starts


def deltas(cfg: PlanConfig) -> dict[str, list[float]]:
    grid = {m: v for m, v in cfg.delta.items() if v is not None} or DEFAULT_GRID
    result = {}
    for metric, value in grid.items():
        if metric not in PLANNABLE:
            raise ValueError(f"plan.delta.{metric}: no such metric; plan one of "
                             f"{', '.join(PLANNABLE)}.")
        values = [float(v) for v in (value if isinstance(value, list | tuple) else [value])]
        if not values or min(values) <= 0:
            raise ValueError(f"plan.delta.{metric}={value}: δ must be > 0 (table units).")
        result[metric] = values
    if not 0 < cfg.power < 1:
        raise ValueError(f"plan.power={cfg.power}: must lie strictly between 0 and 1.")
    return result


def z_scores(tests: int, power: float) -> tuple[float, float]:
    """z_{1-α/(2m)} and z_{power}: the two-sided level-α/m test's critical value and the
    power's quantile."""
    normal = NormalDist()
    return normal.inv_cdf(1 - ALPHA / (2 * max(tests, 1))), normal.inv_cdf(power)


def z_total(tests: int, power: float) -> float:
    """z_{1-α/(2m)} + z_{power}: a two-sided level-α/m test whose null has the spread of Δ has
    this power when Δ/SE(Δ) = z (MAUVE's plan, whose measured null spread is used as SE)."""
    return sum(z_scores(tests, power))


def prompts_needed(se_pilot: float, n_pilot: int, delta: float, z_level: float,
                   z_power: float) -> int:
    """The smallest n at which the paired sign-flip test (critical value ``z_level``) finds a
    true Δ = δ with the power of ``z_power``. Per prompt, the differences have sd σ =
    SE_pilot · √n_pilot; the test's null, flipping the signs of differences whose mean is δ,
    spreads as √((σ² + δ²) / n), wider than SE(Δ) = σ/√n: n = ((z_level · √(σ² + δ²) +
    z_power · σ) / δ)²."""
    sigma = se_pilot * math.sqrt(n_pilot)
    root = (z_level * math.hypot(sigma, delta) + z_power * sigma) / delta
    return max(2, math.ceil(root**2 - 1e-9))


# --- SE-based metrics -----------------------------------------------------------------------

def paired_sums(row: pd.DataFrame, base: pd.DataFrame, columns: list[str],
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt sums ``[prompts, parts]`` of both rows over the (prompt, seed) pairs both
    have, so that a row with fewer seeds is compared only where it has texts."""
    row, base = (t.set_index(["prompt_id", "seed"])[columns] for t in (row, base))
    common = row.index.intersection(base.index)
    return tuple(t.loc[common].groupby(level="prompt_id").sum().sort_index().to_numpy(float)
                 for t in (row, base))


def bootstrap_se(a: np.ndarray, b: np.ndarray, stat, samples: int, seed: int) -> float:
    """Paired bootstrap SE of stat(a) - stat(b), times √(n/(n-1)): the plug-in bootstrap
    variance of a mean is (n-1)/n of the unbiased one, which matters at sub-sample sizes."""
    n = len(a)
    counts = resample_counts(n, samples, seed)
    replicates = stat(resampled(counts, a)) - stat(resampled(counts, b))
    finite = replicates[np.isfinite(replicates)]
    return float(finite.std() * math.sqrt(n / (n - 1))) if finite.size > 1 else math.nan


def scaling_exponent(a: np.ndarray, b: np.ndarray, stat, cfg: PlanConfig, seed: int) -> float:
    """The slope of log SE(Δ) on log n over random prompt subsets of n/4, n/2 and n: −½ where
    SE ∝ 1/√n. Each size's SE is the root mean bootstrap variance over ``cfg.subsamples``
    subsets (for a mean, that average is unbiased for the full-sample variance, so a departure
    shows nonlinearity or sparse differences, not noise)."""
    n = len(a)
    sizes = sorted({max(3, n // 4), max(3, n // 2), n})
    if len(sizes) < 3:
        return math.nan
    rng = np.random.default_rng(seed)
    ses = []
    for size in sizes:
        draws = [np.arange(n)] if size == n else [rng.choice(n, size, replace=False)
                                                   for _ in range(cfg.subsamples)]
        variances = [bootstrap_se(a[i], b[i], stat, cfg.bootstrap_samples, seed + k) ** 2
                     for k, i in enumerate(draws)]
        ses.append(math.sqrt(np.mean(variances)))
    if not all(np.isfinite(ses)) or min(ses) <= 0:
        return math.nan
    return float(np.polyfit(np.log(sizes), np.log(ses), 1)[0])


# --- MAUVE ----------------------------------------------------------------------------------

def swap_null_sd(human: np.ndarray, base: np.ndarray, method: np.ndarray,
                 prompt_of_text: np.ndarray, cfg: MauveConfig, flips: np.ndarray) -> float:
    """The sd of the table's MAUVE swap-test null (``mauve.mauve_swap_null``)."""
    return float(np.std(mauve_swap_null(human, base, method, prompt_of_text, cfg, flips)[1]))


def seed_features(job: Job, cfg: MauveConfig) -> dict[int, dict]:
    """Per seed: the prompt ids and features of the job's texts and references, featurized in
    exactly the lists the table featurized (one seed's records by prompt id), so every call is
    a cache hit."""
    generator = job.config["model"]["source"]
    out = {}
    for seed in sorted({r["seed"] for r in job.records}):
        records = sorted((r for r in job.records if r["seed"] == seed),
                         key=lambda r: r["prompt_id"])
        out[seed] = {
            "prompts": [r["prompt_id"] for r in records],
            "texts": featurize([r["continuation"] for r in records], cfg.featurizer,
                               cfg.max_tokens, generator),
            "references": featurize([r["reference"] for r in records], cfg.featurizer,
                                    cfg.max_tokens, generator)}
    return out


def mauve_null_fit(job: Job, base: Job, cfg: MauveConfig, plan: PlanConfig, seed: int,
                   ) -> tuple[list[int], list[float]]:
    """Prompt-subset sizes (halving from the pilot's while each side keeps MIN_MAUVE_TEXTS
    texts) and the swap-test null sd at each, on the (prompt, seed) pairs both jobs have."""
    mine, theirs = seed_features(job, cfg), seed_features(base, cfg)
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return [], []
    prompts = sorted(set.intersection(*[set(f["prompts"]) for f in (*[mine[s] for s in seeds],
                                                                     *[theirs[s] for s in seeds])]))

    def rows(features: dict, key: str, chosen: list[int]) -> np.ndarray:
        where = {p: i for i, p in enumerate(features["prompts"])}
        return features[key][[where[p] for p in chosen]]

    sizes = []
    size = len(prompts)
    while size * len(seeds) >= MIN_MAUVE_TEXTS:
        sizes.append(size)
        size //= 2
    sizes = sizes[::-1]

    def compute() -> np.ndarray:
        rng = np.random.default_rng(seed)
        sds = []
        for size in sizes:
            subsets = [prompts] if size == len(prompts) else [
                sorted(rng.choice(prompts, size, replace=False).tolist())
                for _ in range(plan.mauve_subsamples)]
            variances = []
            for k, chosen in enumerate(subsets):
                human = rows(theirs[seeds[0]], "references", chosen)
                b = np.vstack([rows(theirs[s], "texts", chosen) for s in seeds])
                m = np.vstack([rows(mine[s], "texts", chosen) for s in seeds])
                prompt_of_text = np.tile(np.arange(size), len(seeds))
                flips = sign_flips(size, plan.mauve_null_samples, seed + k)
                variances.append(swap_null_sd(human, b, m, prompt_of_text, cfg, flips) ** 2)
            sds.append(math.sqrt(np.mean(variances)))
        return np.array(sds)

    if not sizes:
        return [], []
    digest = hashlib.sha1(b"".join(
        np.ascontiguousarray(f[k]).tobytes() for f in (*[mine[s] for s in seeds],
                                                      *[theirs[s] for s in seeds])
        for k in ("texts", "references"))).hexdigest()
    key = [vars(cfg), digest, prompts, seeds, sizes, plan.mauve_subsamples,
           plan.mauve_null_samples, seed]
    return sizes, disk_cached("mauve_null_sd", key, compute).tolist()


def degenerate_null(sds: list[float]) -> bool:
    """Whether a null sd is no spread (zero, rounding or NaN): nothing to fit a power law to."""
    return not all(np.isfinite(sd) and sd > NULL_SD_FLOOR for sd in sds)


def power_law_n(sizes: list[int], sds: list[float], delta: float, z: float) -> tuple[int, float]:
    """n with z · sd(n) = δ from log sd = a + b log n fitted on (sizes, sds); and b. n is -1
    where the fit gives none: an sd that does not shrink with n, a degenerate null sd
    (``degenerate_null``: b is NaN), a fall steeper than ``STEEPEST`` or one so shallow that
    n would exceed ``MOST_PROMPTS``."""
    if degenerate_null(sds):
        return -1, math.nan
    b, a = np.polyfit(np.log(sizes), np.log(sds), 1)
    if b >= 0 or b < STEEPEST:
        return -1, float(b)
    log_n = (math.log(delta / z) - a) / b
    if log_n > math.log(MOST_PROMPTS):
        return -1, float(b)
    return max(2, math.ceil(math.exp(log_n) - 1e-9)), float(b)


# --- cost and command -----------------------------------------------------------------------

def throughput(jobs: list[Job]) -> tuple[float, str]:
    """Tokens/s of the sweep's own generations (a fused generation counted once) and the
    devices they ran on, from the job dirs' ``timing.json``."""
    generations, devices = {}, set()
    for job in jobs:
        for job_dir in job.dirs:
            path = job_dir / TIMING
            if not path.exists():
                continue
            timing = json.loads(path.read_text())
            if timing.get("tokens_per_s", 0) > 0:
                tokens = timing.get("fused_new_tokens", timing["new_tokens"])
                generations[(timing["generate_seconds"], tokens)] = timing["generate_seconds"]
                devices.add(timing.get("device", "a device timing.json does not name"))
    if not generations:
        return math.nan, "not measured (no timing.json with tokens_per_s > 0)"
    tokens = sum(t for _, t in generations)
    return tokens / sum(generations.values()), "; ".join(sorted(devices))


def new_tokens(jobs: list[Job], n: int) -> float:
    """What growing every job to ``n`` prompts generates: new prompts x its seeds x its mean
    tokens per record."""
    total = 0.0
    for job in jobs:
        prompts = {r["prompt_id"] for r in job.records}
        seeds = {r["seed"] for r in job.records}
        mean = np.mean([r["num_tokens"] for r in job.records])
        total += max(0, n - len(prompts)) * len(seeds) * mean
    return total


SWEEPER_OVERRIDES = ("hydra/sweeper=", "hydra.sweeper.sweep_file=", "hydra.mode=")


def launch(job_dir: Path) -> tuple[str, list[str]]:
    """The entry point and overrides that launched ``job_dir`` and grow it again: its multirun's
    (the sweep dir's ``multirun.yaml``); for a dir that an earlier launch into the same sweep
    dir ran (Hydra rewrites ``multirun.yaml`` at every launch), a one-job multirun of its own
    overrides (``.hydra``), which names the same dir; for a single run, its own run's."""
    multirun = job_dir.parent / "multirun.yaml"
    if multirun.exists() and not in_earlier_launch(job_dir):
        overrides = yaml.safe_load(multirun.read_text())["hydra"]["overrides"]
    else:
        overrides = {"task": yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()),
                     "hydra": yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())[
                         "hydra"]["overrides"]["hydra"]}
        if multirun.exists():
            kept = [o for o in overrides["hydra"] if not o.startswith(SWEEPER_OVERRIDES)]
            return "python -m harness -m", [*overrides["task"], *kept]
    hydra, task = overrides["hydra"], overrides["task"]
    sweep_file = next((o.split("=", 1)[1] for o in hydra
                       if o.startswith("hydra.sweeper.sweep_file=")), None)
    if sweep_file is not None:  # python -m harness.sweep NAME: it adds these itself
        path = Path(sweep_file)
        name = path.stem if path == SWEEPS / path.name else str(path)
        drop = (*SWEEPER_OVERRIDES, "hydra/launcher=fused", "sweep=")
        extra = [o for o in [*task, *hydra] if not o.startswith(drop)]
        return f"python -m harness.sweep {shlex.quote(name)}", extra
    multi = multirun.exists()
    extra = [*task, *[o for o in hydra if not o.startswith("hydra.mode=")]]
    return "python -m harness" + (" -m" if multi else ""), extra


def in_earlier_launch(job_dir: Path) -> bool:
    """Whether an earlier launch than the one its sweep dir's ``multirun.yaml`` records ran
    ``job_dir``: its ``.hydra`` files are older than that file."""
    multirun, own = job_dir.parent / "multirun.yaml", job_dir / ".hydra" / "overrides.yaml"
    return (multirun.exists() and own.exists()
            and own.stat().st_mtime < multirun.stat().st_mtime)


def launched_dir(job_dir: Path) -> Path:
    """The job dir a launch names: a cluster task's shard dir (``<job>/shards/<i>-of-<n>``,
    while the study runs) is its job's."""
    shard = job_dir.parent.name == SHARDS and SHARD_NAME.fullmatch(job_dir.name)
    return job_dir.parent.parent if shard else job_dir


def launched_dirs(jobs: list[Job]) -> list[Path]:
    """The jobs' dirs as launches name them, each once."""
    return list(dict.fromkeys(launched_dir(d) for job in jobs for d in job.dirs))


def launches(jobs: list[Job]) -> list[tuple[str, list[str]]]:
    """The distinct launches (entry point, overrides) that grow the jobs' dirs: those of
    earlier launches first, so that the sweep dir's ``multirun.yaml`` ends as it was."""
    dirs = sorted(launched_dirs(jobs), key=lambda d: not in_earlier_launch(d))
    found = []
    for job_dir in dirs:
        if (entry := launch(job_dir)) not in found:
            found.append(entry)
    return found


def extension_command(sweep: list[tuple[str, list[str]]], n: int) -> str:
    """The shell line, run from the dir the sweep was launched in, that grows every job of the
    sweep (its ``launches``) to ``n`` prompts in place: the launch's own overrides with
    ``dataset.limit=n``. Finished (prompt, seed) pairs are skipped, so the pilot's records stay
    as they are."""
    return " && ".join(
        " ".join([entry, *(shlex.quote(o) for o in overrides
                           if not o.startswith("dataset.limit=")), f"dataset.limit={n}"])
        for entry, overrides in sweep)


# --- the plan -------------------------------------------------------------------------------

def identical(job: Job, base: Job) -> bool:
    """Whether the two jobs' texts agree on every (prompt, seed) pair both have."""
    theirs = {(r["prompt_id"], r["seed"]): r["continuation"] for r in base.records}
    pairs = [(r["continuation"], theirs.get((r["prompt_id"], r["seed"]))) for r in job.records]
    common = [(a, b) for a, b in pairs if b is not None]
    return bool(common) and all(a == b for a, b in common)


def table_tests(summary: pd.DataFrame) -> int:
    """m: how many p-values the table's Holm adjustment runs over (its outcome metrics')."""
    columns = [c for c in summary if c.startswith("p_") and c.endswith("_holm")]
    return int(summary[columns].notna().to_numpy().sum()) if columns else 0


def make_plan(summary: pd.DataFrame, per_text: pd.DataFrame, jobs: list[Job],
              mauve_cfg: MauveConfig, baseline: BaselineConfig, cfg: PlanConfig,
              keys: list[str], seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """One row per (configuration, metric, δ); and the notes for under the printed plan."""
    grid = {m: v for m, v in deltas(cfg).items() if m in summary}  # a failed family: none
    if per_text.empty or "method" not in summary:
        return pd.DataFrame(), ["No plan: no job could be analysed."]
    tests = table_tests(summary)
    z = z_scores(tests, cfg.power)
    rate, device = throughput(jobs)
    by_name = {job.name: job for job in jobs}
    frame = with_parts(per_text[per_text["method"] != "human"])

    def key(row: pd.Series) -> str:
        return row["config"]  # the configuration identity (harness.identity)

    texts = dict(tuple(frame.groupby("config", sort=False)))
    job_of = {k: by_name.get(g["job"].iloc[0]) for k, g in texts.items()}
    runs = summary[summary["method"] != "human"]
    group_of = {i: r["references"] for i, r in runs.iterrows()
                if job_of.get(key(r)) is not None}
    rows, warnings, mauve_fits = [], [], {}
    for group in dict.fromkeys(group_of.values()):
        members = runs.loc[[i for i, g in group_of.items() if g == group]]
        base = baseline_row(members, baseline, keys)
        if base is None:
            continue
        base_key = key(summary.loc[base])
        for i, row in members.iterrows():
            if i == base:
                continue
            job, base_job = job_of[key(row)], job_of[base_key]
            same = identical(job, base_job)
            for metric, values in grid.items():
                ident = {**{k: row[k] for k in keys if k in row}, "config": row["config"]}
                out = plan_metric(metric, values, row, texts[key(row)], texts[base_key], job,
                                  base_job, same, mauve_cfg, cfg, z, seed, mauve_fits)
                for entry in out:
                    rows.append({**ident, "metric": metric, **entry})
    if not rows:
        return pd.DataFrame(), ["No plan: no row has a baseline to be compared with."]
    plan = pd.DataFrame(rows)
    cost = {n: new_tokens(jobs, n) for n in plan["n_needed"].dropna().astype(int).unique()}
    planned = plan["status"] == "planned"
    plan["tokens"] = [round(cost[int(n)]) if p else (math.nan if math.isnan(n) else 0)
                      for n, p in zip(plan["n_needed"], planned, strict=True)]
    plan["seconds"] = plan["tokens"] / rate
    sweep = launches(jobs)
    earlier = [d for d in launched_dirs(jobs) if in_earlier_launch(d)]
    if earlier:
        warnings.append(
            f"{len(earlier)} job dirs were last run by an earlier launch into their sweep dir "
            f"than the one its multirun.yaml records ({', '.join(d.name for d in earlier)}): "
            "the command grows each of them with its own overrides.")
    plan["command"] = [extension_command(sweep, int(n)) if p else ""
                       for n, p in zip(plan["n_needed"], planned, strict=True)]
    far = plan[(plan["exponent"] - (-0.5)).abs() > EXPONENT_TOLERANCE]
    far = far[far["metric"] != "mauve"]
    if not far.empty:
        warnings.append(
            f"Warning: the SE of Δ does not scale as 1/√n on the pilot for {len(far)} "
            f"(row, metric, δ) entries (fitted exponent off −½ by more than "
            f"{EXPONENT_TOLERANCE}; column `exponent` of plan.csv): their n is less certain.")
    for warning in warnings:
        log.warning("%s", warning)
    notes = [
        f"Plan: {cfg.power:.0%} power for a two-sided 5% test after the table's Holm "
        f"adjustment over its m = {tests} tests, planned conservatively at α/m = "
        f"{ALPHA / max(tests, 1):.2g} per test (Holm's first threshold; its later ones are "
        f"looser). From the pilot's variances only, never its observed Δ: fix n from the "
        f"plan, run once, analyse once.",
        "SE metrics: SE(Δ) at n = SE_pilot · √(n_pilot / n), on the (prompt, seed) pairs the "
        "row and the baseline both have, and the sign-flip test's null at a true Δ = δ spread "
        "by δ too: n = ((z_{α/2m} · √(σ² + δ²) + z_power · σ) / δ)², σ = SE_pilot · √n_pilot; "
        "`exponent` is the slope of log SE on log n over pilot sub-samples (n/4, n/2, n), −½ "
        "where the projection holds.",
        "MAUVE: the swap test's null sd at halving sub-sample sizes (each with its own k-means "
        f"codebook) fitted by a power law (its `se_pilot` is that sd at the pilot's n, its "
        f"`exponent` the fitted one); `extrapolation` = n / n_pilot; fewer than 3 sizes "
        f"with >= {MIN_MAUVE_TEXTS} texts per side: \"pilot too small\".",
        f"Cost: new tokens of every job of the sweep (each seed) up to n prompts, at "
        f"{rate:.1f} tok/s measured on {device} (timing.json); the dataset must hold n prompts.",
        *warnings]
    return plan, notes


def plan_metric(metric: str, values: list[float], row: pd.Series, texts: pd.DataFrame,
                base_texts: pd.DataFrame, job: Job, base_job: Job, same: bool,
                mauve_cfg: MauveConfig, cfg: PlanConfig, z: tuple[float, float], seed: int,
                mauve_fits: dict) -> list[dict]:
    """The plan's entries of one (row, metric), one per δ (``z``: ``z_scores``)."""
    scale = SCALE.get(metric, 1)
    p_holm = row.get(f"p_{metric}_holm", math.nan)
    n_pilot = len(set(texts["prompt_id"]) & set(base_texts["prompt_id"]))
    common = {"n_pilot": n_pilot, "se_pilot": math.nan, "exponent": math.nan}
    if same:
        return [{**common, "delta": d, "n_needed": math.nan, "extrapolation": math.nan,
                 "status": "identical to baseline: no n resolves it"} for d in values]
    if pd.notna(p_holm) and p_holm < ALPHA:
        return [{**common, "delta": d, "n_needed": n_pilot, "extrapolation": 1.0,
                 "status": f"resolved at n = {n_pilot} (Holm p = {p_holm:.2g})"}
                for d in values]
    if metric == "mauve":
        pair = (job.name, base_job.name)
        if pair not in mauve_fits:
            mauve_fits[pair] = mauve_null_fit(job, base_job, mauve_cfg, cfg, seed)
        sizes, sds = mauve_fits[pair]
        if len(sizes) < 3:
            why = (f"pilot too small: {len(sizes)} sub-sample sizes with >= "
                   f"{MIN_MAUVE_TEXTS} texts per side, 3 needed to fit the null sd")
            return [{**common, "delta": d, "n_needed": math.nan, "extrapolation": math.nan,
                     "status": why} for d in values]
        out = []
        for d in values:
            n, exponent = power_law_n(sizes, sds, d / scale, sum(z))
            ok = n > 0
            if ok:
                why = status(n, n_pilot)
            elif degenerate_null(sds):
                why = (f"{DEGENERATE}: the swap test's null sd is "
                       f"{', '.join(f'{sd:.2g}' for sd in sds)} at n = "
                       f"{', '.join(map(str, sizes))} (a sub-sample's texts all in one "
                       "cluster): run a larger pilot")
            elif exponent < STEEPEST:
                why = (f"{DEGENERATE}: its sd falls as n^{exponent:.3g} over n = "
                       f"{', '.join(map(str, sizes))}, faster than any sampling spread")
            elif exponent < 0:
                why = (f"null sd shrinks only as n^{exponent:.3g}: more than "
                       f"{MOST_PROMPTS:,} prompts, no plan")
            else:
                why = "null sd does not shrink with n: no plan"
            out.append({**common, "se_pilot": sds[-1] * scale, "exponent": exponent, "delta": d,
                        "n_needed": n if ok else math.nan,
                        "extrapolation": n / n_pilot if ok else math.nan, "status": why})
        return out
    columns, stat = PARTS[metric]
    if not set(columns) <= set(texts) or texts[columns].isna().any().any():
        return [{**common, "delta": d, "n_needed": math.nan, "extrapolation": math.nan,
                 "status": "metric not computed for this row"} for d in values]
    a, b = paired_sums(texts, base_texts, columns)
    se = bootstrap_se(a, b, stat, cfg.bootstrap_samples, seed)
    exponent = scaling_exponent(a, b, stat, cfg, seed)
    if not se > 0:
        return [{**common, "delta": d, "n_needed": math.nan, "extrapolation": math.nan,
                 "status": "no variance of Δ in the pilot: no plan"} for d in values]
    out = []
    for d in values:
        n = prompts_needed(se, n_pilot, d / scale, *z)
        out.append({**common, "se_pilot": se * scale, "exponent": exponent, "delta": d,
                    "n_needed": n, "extrapolation": n / n_pilot, "status": status(n, n_pilot)})
    return out


def status(n: int, n_pilot: int) -> str:
    if n > n_pilot:
        return "planned"
    return (f"the pilot's n = {n_pilot} already has this power (and its Δ is not significant: "
            "the difference is likely smaller)")


def render_plan(plan: pd.DataFrame, keys: list[str], notes: list[str]) -> str:
    """Per metric, configurations x δ: the prompts needed (and the projected time), or why
    there is no n."""
    if plan.empty:
        return "\n".join(f"- {note}" for note in notes) + "\n"
    shown = [k for k in keys if k in plan and plan[k].notna().any()
             and k not in ("model", "dataset", "max_new_tokens")
             and not (k == "temperature" and set(plan[k].dropna()) <= {1.0})]
    parts = []
    for metric, rows in plan.groupby("metric", sort=False):
        cells = {}
        for _, r in rows.iterrows():
            label = " ".join(str(r[k]) if k == "method" else f"{k}={r[k]}"
                             if isinstance(r[k], str) else f"{k}={r[k]:g}"
                             for k in shown if pd.notna(r[k]) and r[k] != "")
            if r["status"] == "planned":
                text = f"{int(r['n_needed'])} ({duration(r['seconds'])}"
                text += f", x{r['extrapolation']:.0f} extrapolated)" if metric == "mauve" else ")"
            else:
                text = r["status"]
            cells.setdefault(label, {})[f"δ = {r['delta']:g}"] = text
        table = pd.DataFrame(cells).T.rename_axis("configuration").reset_index()
        parts.append(f"**{metric}** (Δ in the table's units; prompts per configuration, "
                     f"projected generation time of the whole sweep):\n\n"
                     + table.to_markdown(index=False))
    commands = plan.loc[plan["command"] != "", ["n_needed", "command"]]
    if not commands.empty:
        first = commands.sort_values("n_needed").iloc[0]
        notes = [*notes, "Extend in place (from the dir the sweep was launched in; every "
                 f"command is in plan.csv), e.g. for n = {int(first['n_needed'])}: "
                 f"`{first['command']}`"]
    return "\n\n".join(parts) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "time not measured"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.2g} {unit}" if seconds < 10 * size else (
                f"{seconds / size:.0f} {unit}")
    return f"{seconds:.0f} s"


def plan_sweep(summary: pd.DataFrame, per_text: pd.DataFrame, jobs: list[Job],
               mauve_cfg: MauveConfig, baseline: BaselineConfig, cfg: PlanConfig,
               keys: list[str], out: Path) -> tuple[pd.DataFrame, str]:
    """The plan of an analysed sweep, written to ``out``/plan.csv and plan.md; and its text."""
    plan, notes = make_plan(summary, per_text, jobs, mauve_cfg, baseline, cfg, keys)
    markdown = render_plan(plan, keys, notes)
    plan.to_csv(out / "plan.csv", index=False)
    (out / "plan.md").write_text(markdown)
    return plan, markdown
