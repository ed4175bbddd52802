"""``python -m harness.study SWEEP [override ...] study.delta.<metric>=δ ...``: run a named
sweep until every comparison with the baseline is decided, generating only where a decision is
still missing.

A pilot of ``study.pilot`` prompts, then looks at ``study.looks`` prompt counts (geometric) up
to ``study.max_prompts``. At each look, every comparison of a configuration with the baseline
(paired Δ on the prompts both have: the analysis's ``compare_rows``) on every metric given a
δ is tested against group-sequential boundaries (``analysis.sequential``: Lan–DeMets error
spending at α/m for the m comparisons x metrics). A comparison is decided "different" when
its repeated confidence interval Δ̂ ± c_k·SE excludes 0, "within ±δ" when it lies inside
(−δ, δ), "identical" when the configuration's texts are the baseline's; otherwise it waits
for the next look, and at the last look it is reported undecided with its interval. The next
extension (one launch of the sweep's launcher, ``dataset.limit`` = the next look's count)
covers only configurations with an undecided comparison, and the baseline while any needs it.

The study's state is in the sweep dir: ``study.json`` (the command, the design, every
complete look with its boundary, spent α, statistics and decisions), ``study.csv`` and
``study.md``. Killing the study and re-running the same command continues from the last
complete look: records already written are skipped by the runner, decisions already taken are
read back, never recomputed. Overrides other than ``study.*`` go to the sweep, except
``analysis.<key>=...``, which go to the analysis config (``conf/analysis.yaml``: the baseline,
the coherence scorer, ...).

This module sits above the runner and the analysis (it launches sweeps and reads what they
write); nothing imports it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from analysis import sequential
from analysis.__main__ import AnalysisConfig, load_config
from analysis.load import Job, find_jobs
from analysis.plan import (
    PLANNABLE,
    SCALE,
    identical,
    launched_dir,
    launched_dirs,
    prompts_needed,
)
from analysis.stats import BootstrapConfig
from analysis.table import MetricsConfig, configuration, parameters
from analysis.uncertainty import compare_rows, matching
from harness.records import JOB
from harness.sweep import SweepFileError, load_sweep, sweep_path

log = logging.getLogger("study")
CONF = Path(__file__).resolve().parent.parent / "conf"
STATE, TABLE, REPORT = "study.json", "study.csv", "study.md"
STUDY_RUN_ID = "wandb_study_run_id"  # in the sweep dir: the study's W&B run
LOOKS_DIR = ".study"  # in the sweep dir: the sweep file of each look's launch
SPENDING_NAMES = {"obrien_fleming": "O'Brien–Fleming", "pocock": "Pocock"}
FREE = ("wandb", "generation.batch_size=", "hydra/launcher=", "hydra.launcher.")
STOPPABLE = [m for m in PLANNABLE if m != "mauve"]  # MAUVE's swap test has no z statistic


@dataclass
class StudyConfig:
    """``study`` (``conf/study/default.yaml``): what a study decides and how."""

    # metric -> δ in the table's units (MAUVE and diversity x 100), e.g.
    # study.delta.diversity=2; only the metrics given are decided (at least one)
    delta: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(STOPPABLE))
    pilot: int = 20  # prompts of the first look
    max_prompts: int = 500  # prompts of the last look
    looks: Any = 4  # how many looks, geometric from pilot to max_prompts; or [n1, n2, ...]
    spending: str = "obrien_fleming"  # obrien_fleming | pocock (Lan–DeMets types)
    alpha: float = 0.05  # family-wise over every comparison x metric (Bonferroni)
    power: float = 0.8  # of the fixed-n plan the study is compared with
    bootstrap_samples: int = 2000  # per SE of Δ at a look
    seed: int = 0


ConfigStore.instance().store(group="study", name="study_schema", node=StudyConfig)


MAUVE_REFUSED = ("study.delta.mauve: MAUVE's swap test has no closed-form boundary, so it is "
                 f"left out of the stopping rule; decide on {', '.join(STOPPABLE)} and read "
                 "MAUVE from the final table.")


def margins(cfg: StudyConfig) -> dict[str, float]:
    """The metrics to decide and their δ (table units); a bad value is one line."""
    chosen = {m: v for m, v in cfg.delta.items() if v is not None}
    if "mauve" in chosen:
        raise ValueError(MAUVE_REFUSED)
    if not chosen:
        raise ValueError("no study.delta given: name the smallest difference that matters, "
                         "e.g. study.delta.diversity=2 study.delta.coherence=0.02 (table "
                         "units).")
    for metric, value in chosen.items():
        if metric not in STOPPABLE:
            raise ValueError(f"study.delta.{metric}: no such metric; use one of "
                             f"{', '.join(STOPPABLE)}.")
        if isinstance(value, list | tuple) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"study.delta.{metric}={value}: one δ > 0 per metric (table "
                             "units).")
    return {m: float(v) for m, v in chosen.items()}


def planned_looks(cfg: StudyConfig) -> list[int]:
    if cfg.pilot < 4:
        raise ValueError(f"study.pilot={cfg.pilot}: must be >= 4 (an SE needs a few prompts; "
                         "20 or more keeps the z statistic near normal).")
    if cfg.max_prompts < cfg.pilot:
        raise ValueError(f"study.max_prompts={cfg.max_prompts} is below study.pilot="
                         f"{cfg.pilot}.")
    if isinstance(cfg.looks, int) and not isinstance(cfg.looks, bool):
        if cfg.looks < 1:
            raise ValueError(f"study.looks={cfg.looks}: at least 1 look.")
        return sequential.look_counts(cfg.pilot, cfg.max_prompts, cfg.looks)
    looks = list(cfg.looks) if isinstance(cfg.looks, list | tuple) else None
    if (not looks or not all(isinstance(n, int) for n in looks) or looks[0] != cfg.pilot
            or looks[-1] != cfg.max_prompts or any(np.diff(looks) <= 0)):
        raise ValueError(f"study.looks={cfg.looks}: a number of looks, or increasing prompt "
                         f"counts from study.pilot ({cfg.pilot}) to study.max_prompts "
                         f"({cfg.max_prompts}), e.g. [{cfg.pilot},{cfg.max_prompts}].")
    return looks


def validate(cfg: StudyConfig) -> None:
    margins(cfg)
    planned_looks(cfg)
    sequential.spending_function(cfg.spending)
    for key in ("alpha", "power"):
        if not 0 < getattr(cfg, key) < 1:
            raise ValueError(f"study.{key}={getattr(cfg, key)}: must lie strictly between 0 "
                             "and 1.")
    if cfg.bootstrap_samples < 100:
        raise ValueError(f"study.bootstrap_samples={cfg.bootstrap_samples}: use >= 100 (the "
                         "SE of Δ is their standard deviation).")


# ---- the command -----------------------------------------------------------------------------

@dataclass
class Command:
    """What ``python -m harness.study`` was given, split by destination."""

    sweep: str
    sweep_overrides: list[str]
    study_overrides: list[str]
    analysis_overrides: list[str]

    @classmethod
    def parse(cls, argv: list[str]) -> Command:
        if not argv or argv[0].startswith("-") or "=" in argv[0]:
            raise SystemExit(__doc__)
        name, rest = argv[0], argv[1:]
        study = [a for a in rest if a.startswith(("study.", "study="))]
        analysis = [a.removeprefix("analysis.") for a in rest if a.startswith("analysis.")]
        sweep = [a for a in rest if a not in study and not a.startswith("analysis.")]
        if not any(a.startswith("wandb") for a in analysis):  # one W&B choice for both
            analysis += [a for a in sweep if a.startswith("wandb=")][-1:]
        for override in sweep:
            if override.startswith("dataset.limit="):
                raise ValueError(f"{override}: the study sets dataset.limit itself (study.pilot, "
                                 "study.looks, study.max_prompts); leave it out.")
        return cls(name, sweep, study, analysis)

    def sweep_dir(self) -> Path:
        given = [o.split("=", 1)[1] for o in self.sweep_overrides
                 if o.startswith("hydra.sweep.dir=")]
        return Path(given[-1]) if given else Path("multirun") / sweep_path(self.sweep).stem


def study_config(overrides: list[str]) -> StudyConfig:
    # The schema has no MAUVE δ, so Hydra would refuse it as an unknown key: say why instead.
    if any(o.lstrip("+~").split("=", 1)[0] == "study.delta.mauve" for o in overrides):
        raise ValueError(MAUVE_REFUSED)
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(overrides=["+study=default", *overrides])
    except (HydraException, OmegaConfBaseException) as error:
        why = str(error).splitlines()[0]
        if error.__cause__ is not None:
            why += f" ({str(error.__cause__).splitlines()[0]})"
        raise ValueError(f"study overrides {' '.join(overrides)}: {why}") from error
    return OmegaConf.to_object(cfg.study)


# ---- statistics at a look --------------------------------------------------------------------

FAMILIES = {"diversity": "ngrams", "rep_2": "ngrams", "rep_3": "ngrams", "rep_4": "ngrams",
            "coherence": "coherence", "coherence_ll": "likelihood", "perplexity": "likelihood",
            "mean_tokens": "records", "eos_rate": "records"}


def text_stats(job: Job, metrics: list[str], cfg: MetricsConfig) -> pd.DataFrame:
    """Rows of ``per_text.csv`` for ``job`` with only the per-text parts ``metrics`` need
    (the analysis's own functions and caches; MAUVE, which the study does not decide, is
    never computed)."""
    from analysis.coherence import embedding_coherence, token_log_likelihoods
    from analysis.diversity import ngram_counts
    from analysis.table import NGRAM_COLUMNS

    families = {FAMILIES[m] for m in metrics}
    generator = job.config["model"]["source"]
    frames = []
    for seed in sorted({r["seed"] for r in job.records}):
        records = sorted((r for r in job.records if r["seed"] == seed),
                         key=lambda r: r["prompt_id"])
        prompts = [r["prompt"] for r in records]
        texts = [r["continuation"] for r in records]
        frame = pd.DataFrame({"prompt_id": [r["prompt_id"] for r in records], "seed": seed,
                              "num_tokens": [float(r["num_tokens"]) for r in records],
                              "eos": [r["finish_reason"] == "eos" for r in records]})
        if "ngrams" in families:
            frame[NGRAM_COLUMNS] = ngram_counts(texts, cfg.diversity.skip_last_ngram)
        if "coherence" in families:
            frame["coherence"] = embedding_coherence(prompts, texts, cfg.coherence, generator)
        if "likelihood" in families:
            frame[["ll_sum", "ll_tokens"]] = token_log_likelihoods(prompts, texts,
                                                                   cfg.coherence)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def first_prompts(job: Job, n: int) -> Job:
    """``job`` with only the records of its ``n`` smallest prompt ids (what a look at n
    prompts sees, whatever a dir holds beyond it)."""
    kept = set(sorted({r["prompt_id"] for r in job.records})[:n])
    return dataclasses.replace(job, records=[r for r in job.records if r["prompt_id"] in kept])


# ---- the study -------------------------------------------------------------------------------

@dataclass
class Comparison:
    """One configuration against the baseline on one metric."""

    config: str  # the configuration's id (harness.identity, as in per_text.csv)
    metric: str
    delta: float
    decision: str = sequential.UNDECIDED
    look: int = 0  # 1-based look of the decision (or of the last statistics)
    n: int = 0
    delta_hat: float = math.nan
    se: float = math.nan
    low: float = math.nan
    high: float = math.nan
    alpha_spent: float = 0.0

    @property
    def decided(self) -> bool:
        return self.decision != sequential.UNDECIDED


class Study:
    """The state of one study in its sweep dir (``study.json``), look by look."""

    def __init__(self, command: Command, cfg: StudyConfig, analysis: AnalysisConfig) -> None:
        self.command, self.cfg, self.analysis = command, cfg, analysis
        self.dir = command.sweep_dir()
        self.looks_planned = planned_looks(cfg)
        self.margins = margins(cfg)
        self.state: dict = {"command": self.identity(), "looks": [], "comparisons": None,
                            "design": None}

    def identity(self) -> dict:
        """What a re-run must repeat to continue this study: not the settings that never
        change a record (W&B, batch size, launcher), which a resume may change."""
        kept = [o for o in self.command.sweep_overrides if not o.startswith(FREE)]
        return {"sweep": self.command.sweep, "sweep_overrides": kept,
                "study": dataclasses.asdict(self.cfg),
                "analysis_overrides": [o for o in self.command.analysis_overrides
                                       if not o.startswith(FREE)]}

    # -- state on disk --
    def load(self) -> None:
        path = self.dir / STATE
        if not path.exists():
            return
        state = json.loads(path.read_text())
        if state["command"] != self.identity():
            raise ValueError(f"{path} belongs to another study ({describe(state['command'])}); "
                             "re-run that command to continue it, or give this one its own "
                             "hydra.sweep.dir=...")
        self.state = state

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        temporary = self.dir / f".{STATE}.tmp"
        temporary.write_text(json.dumps(self.state, indent=1, default=float))
        os.replace(temporary, self.dir / STATE)

    @property
    def comparisons(self) -> list[Comparison]:
        return [Comparison(**c) for c in self.state["comparisons"] or []]

    # -- jobs --
    def jobs(self) -> tuple[dict[str, Job], str]:
        """Every configuration of the sweep dir (each dir read on its own, so that a
        configuration that stopped growing does not shrink the others' prompts) and the
        baseline's id."""
        found = {}
        dirs = dict.fromkeys(launched_dir(p.parent) for p in sorted(self.dir.rglob(JOB)))
        for job_dir in dirs:
            job = find_jobs([job_dir])[0]
            found[job.config_id] = job
        rows = pd.DataFrame([configuration(j) for j in found.values()])
        base = matching(rows, self.analysis.baseline)
        if base.empty:
            raise ValueError(f"the baseline ({self.analysis.baseline.method} "
                             f"{dict(self.analysis.baseline.params)}) is not a configuration "
                             f"of sweep {self.command.sweep}; choose one with "
                             "analysis.baseline.method=... analysis.baseline.params.<p>=...")
        if rows["references"].nunique() > 1:
            raise ValueError(f"sweep {self.command.sweep} has configurations with different "
                             "references (model, dataset, lengths): a study compares one "
                             "reference group with its baseline.")
        return found, base.iloc[0]["config"]

    # -- one look --
    def launch(self, k: int, n: int, configs: list[str], jobs: dict[str, Job]) -> dict:
        """Grow ``configs`` (all at the pilot) to ``n`` prompts with one launch of the sweep's
        launcher; wall and CPU seconds of the launch."""
        from harness.sweep import main as run_sweep

        if k == 0:
            name, extra = self.command.sweep, []
        else:
            name, extra = str(self.look_sweep(k, [jobs[c] for c in configs])), []
        started, cpu = time.time(), time.process_time()
        children = os.times()
        log.info("look %d: %d prompts for %s", k + 1, n,
                 f"{len(configs)} configurations" if k else "every configuration (the pilot)")
        run_sweep([name, *self.command.sweep_overrides, *extra, f"dataset.limit={n}"])
        after = os.times()
        return {"seconds": time.time() - started,
                "cpu_seconds": time.process_time() - cpu + (after.children_user
                                                             - children.children_user)
                + (after.children_system - children.children_system)}

    def look_sweep(self, k: int, jobs: list[Job]) -> Path:
        """A sweep file of one grid per configuration to grow (its own overrides), named as
        the study's sweep so that the jobs keep their dirs, sweep name and W&B group."""
        grids = []
        given = set(self.command.sweep_overrides)
        for job in jobs:
            task = yaml.safe_load((launched_dirs([job])[0] / ".hydra" / "overrides.yaml")
                                  .read_text())
            own = [o for o in task if o not in given
                   and not o.startswith(("sweep=", "dataset.limit="))]
            grids.append(dict(o.split("=", 1) for o in own))
        stem = sweep_path(self.command.sweep).stem
        path = self.dir / LOOKS_DIR / f"look-{k + 1}" / f"{stem}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"grids": grids}, sort_keys=False))
        return path

    def decide(self, k: int, n_planned: int, jobs: dict[str, Job], base: str) -> dict:
        """Statistics and decisions of look ``k`` for every undecided comparison."""
        base_job = first_prompts(jobs[base], n_planned)
        n = len({r["prompt_id"] for r in base_job.records})
        final = k == len(self.looks_planned) - 1 or n < n_planned
        design = self.state["design"]
        fractions = [*[look["fraction"] for look in self.state["looks"]],
                     1.0 if final else n / self.looks_planned[-1]]
        boundary = float(sequential.boundaries(fractions, design["alpha_per_comparison"],
                                               self.cfg.spending)[-1])
        alpha_spent = float(sequential.spent(design["alpha_per_comparison"], fractions[-1:],
                                             self.cfg.spending)[0])
        metrics = list(self.margins)
        base_stats = text_stats(base_job, metrics, self.analysis.metrics)
        comparisons = self.comparisons
        cache: dict[str, pd.DataFrame] = {}
        for c in comparisons:
            if c.decided:
                continue
            job = first_prompts(jobs[c.config], n)
            if k == 0 and identical(job, base_job):
                c.decision = sequential.IDENTICAL
                c.delta_hat, c.se, c.low, c.high = 0.0, 0.0, 0.0, 0.0
            else:
                if c.config not in cache:
                    cache[c.config] = text_stats(job, metrics, self.analysis.metrics)
                scale = SCALE.get(c.metric, 1)
                result = compare_rows(cache[c.config], base_stats, c.metric,
                                      BootstrapConfig(samples=self.cfg.bootstrap_samples,
                                                      seed=self.cfg.seed + k))
                # the plug-in bootstrap variance is (n - 1)/n of the unbiased one
                unbiased = math.sqrt(result.prompts / max(result.prompts - 1, 1))
                c.delta_hat, c.se = result.delta * scale, result.se * scale * unbiased
                decision, low, high = sequential.decide(
                    np.array([c.delta_hat]), np.array([c.se]),
                    sequential.on_t_scale(boundary, result.prompts), c.delta)
                c.decision, c.low, c.high = str(decision[0]), float(low[0]), float(high[0])
            c.look, c.n, c.alpha_spent = k + 1, n, alpha_spent
        self.state["comparisons"] = [dataclasses.asdict(c) for c in comparisons]
        return {"look": k + 1, "n": n, "fraction": fractions[-1], "final": final,
                "boundary": boundary, "boundary_t": sequential.on_t_scale(boundary, n),
                "alpha_spent": alpha_spent,
                "decided": sum(c.decided for c in comparisons)}

    def growing(self) -> list[str]:
        """Configurations with an undecided comparison, and the baseline if there are any."""
        undecided = list(dict.fromkeys(c.config for c in self.comparisons if not c.decided))
        return [*undecided, self.state["design"]["baseline"]] if undecided else []

    def start(self, jobs: dict[str, Job], base: str) -> None:
        """The design, fixed once the pilot shows the sweep's configurations."""
        others = [c for c in jobs if c != base]
        m = len(others) * len(self.margins)
        self.state["design"] = {
            "looks": self.looks_planned, "spending": self.cfg.spending, "alpha": self.cfg.alpha,
            "comparisons": m, "alpha_per_comparison": self.cfg.alpha / m, "baseline": base,
            "boundaries_planned": sequential.boundaries(
                np.array(self.looks_planned) / self.looks_planned[-1], self.cfg.alpha / m,
                self.cfg.spending).tolist()}
        self.state["comparisons"] = [dataclasses.asdict(Comparison(c, metric, delta))
                                     for c in others for metric, delta in self.margins.items()]

    def run(self) -> None:
        self.load()
        done = len(self.state["looks"])
        if done:
            log.info("resuming %s after look %d of %d (its decisions are read back)",
                     self.dir / STATE, done, len(self.looks_planned))
        for k in range(done, len(self.looks_planned)):
            if k and (not self.growing() or self.state["looks"][-1]["final"]):
                break
            n = self.looks_planned[k]
            configs = self.growing() if k else []
            cost = self.launch(k, n, configs, self.jobs()[0] if k else {})
            jobs, base = self.jobs()
            if k == 0 and self.state["design"] is None:
                self.start(jobs, base)
            look = self.decide(k, n, jobs, base)
            if k == 0:  # the fixed-n plan the study is compared with uses the pilot's SEs
                self.state["pilot"] = self.state["comparisons"]
            look.update(cost, grown=len(configs) if k else len(jobs),
                        tokens=tokens_of(jobs))
            self.state["looks"].append(look)
            self.save()
            write_outputs(self, jobs)
            log.info("look %d (n = %d, boundary |z| >= %.3f): %d of %d comparisons decided",
                     k + 1, look["n"], look["boundary"], look["decided"],
                     len(self.comparisons))
        jobs, _ = self.jobs()
        write_outputs(self, jobs)
        print((self.dir / REPORT).read_text())


def tokens_of(jobs: dict[str, Job]) -> dict[str, int]:
    return {c: int(sum(r["num_tokens"] for r in job.records)) for c, job in jobs.items()}


def describe(command: dict) -> str:
    return " ".join(["python -m harness.study", command["sweep"],
                     *map(shlex.quote, command["sweep_overrides"])])


# ---- outputs ---------------------------------------------------------------------------------

def fixed_design(study: Study, jobs: dict[str, Job]) -> dict:
    """The fixed-n plan for the same δs, level and power, from the pilot's SEs (as
    ``analysis.plan.prompts_needed`` plans, at the level α/m of each comparison): every
    configuration at the largest n any comparison needs; its tokens at each configuration's
    mean tokens per text, its seconds at the study's own measured rate."""
    pilot = study.state["looks"][0]
    design = study.state["design"]
    normal = NormalDist()
    z_level = normal.inv_cdf(1 - design["alpha_per_comparison"] / 2)
    z_power = normal.inv_cdf(study.cfg.power)
    needs = [prompts_needed(c["se"], pilot["n"], c["delta"], z_level, z_power)
             for c in study.state["pilot"]
             if c["decision"] != sequential.IDENTICAL and c["se"] > 0]
    n = max(needs) if needs else pilot["n"]
    tokens = 0.0
    for job in jobs.values():
        seeds = len({r["seed"] for r in job.records})
        tokens += n * seeds * np.mean([r["num_tokens"] for r in job.records])
    looks = study.state["looks"]
    spent_seconds = sum(look["seconds"] for look in looks)
    spent_tokens = sum(tokens_of(jobs).values())
    rate = spent_tokens / spent_seconds if spent_seconds else math.nan
    return {"n": n, "tokens": tokens, "seconds": tokens / rate if rate else math.nan,
            "study_tokens": spent_tokens, "study_seconds": spent_seconds,
            "study_cpu_seconds": sum(look["cpu_seconds"] for look in looks)}


def table(study: Study, jobs: dict[str, Job]) -> pd.DataFrame:
    keys = ["method", *parameters(list(jobs.values()))]
    rows = []
    for c in study.comparisons:
        columns = configuration(jobs[c.config])
        rows.append({**{k: columns.get(k) for k in keys}, "config": c.config,
                     "metric": c.metric, "delta": c.delta, "decision": c.decision, "n": c.n,
                     "look": c.look, "alpha_spent": c.alpha_spent, "delta_hat": c.delta_hat,
                     "low": c.low, "high": c.high, "se": c.se,
                     "tokens": tokens_of({c.config: jobs[c.config]})[c.config]})
    return pd.DataFrame(rows)


def label(row: pd.Series, parameters: list[str]) -> str:
    values = [f"{p}={row[p]:g}" if isinstance(row[p], float) else f"{p}={row[p]}"
              for p in parameters if pd.notna(row[p])]
    return " ".join([str(row["method"]), *values])


def render(study: Study, frame: pd.DataFrame, fixed: dict) -> str:
    design, looks = study.state["design"], study.state["looks"]
    shown = frame.copy()
    parameters = [p for p in frame.columns[1:frame.columns.get_loc("config")]
                  if frame[p].astype(str).nunique() > 1]  # (temperature 1 everywhere: not shown)
    shown["configuration"] = [label(r, parameters) for _, r in frame.iterrows()]
    shown["Δ̂ [repeated interval]"] = [
        f"{r['delta_hat']:.3g} [{r['low']:.3g}, {r['high']:.3g}]" for _, r in frame.iterrows()]
    shown = shown[["configuration", "metric", "delta", "decision", "look", "n",
                   "Δ̂ [repeated interval]", "alpha_spent", "tokens"]]
    lines = [f"# Study of sweep {study.command.sweep}", "",
             shown.to_markdown(index=False, floatfmt=".3g"), ""]
    rows = [{"look": look["look"], "prompts": look["n"], "configurations grown": look["grown"],
             "boundary |z|": f"{look['boundary']:.3f}",
             "on the t scale": f"{look['boundary_t']:.3f}", "α spent (per comparison)":
             f"{look['alpha_spent']:.2g}", "decided": look["decided"],
             "seconds": f"{look['seconds']:.0f}", "CPU s": f"{look['cpu_seconds']:.0f}"}
            for look in looks]
    lines += ["## Looks", "", pd.DataFrame(rows).to_markdown(index=False), ""]
    lines += [
        f"- Design: {len(design['looks'])} looks at {design['looks']} prompts, "
        f"{SPENDING_NAMES[design['spending']]}-type error spending (Lan–DeMets) at "
        f"α/m = {design['alpha']:g}/{design['comparisons']} = "
        f"{design['alpha_per_comparison']:.3g} per comparison (Bonferroni over the "
        f"{design['comparisons']} comparisons x metrics, so each stops on its own); planned "
        f"boundaries |z| >= {', '.join(f'{c:.3f}' for c in design['boundaries_planned'])}.",
        "- Decisions: \"different\" where the repeated interval Δ̂ ± c_k·SE excludes 0, "
        "\"within ±δ\" where it lies inside (−δ, δ), \"identical\" where the texts are the "
        "baseline's (decided at the first look); the intervals cover every Δ at every look "
        "at once with probability >= 1 − α. MAUVE is not decided (no closed-form boundary "
        "for its swap test).",
        f"- Cost: the study generated {fixed['study_tokens']:,} tokens in "
        f"{fixed['study_seconds']:.0f} s of launches ({fixed['study_cpu_seconds']:.0f} s CPU, "
        f"user + sys); the fixed-n plan for the same δs, level and {study.cfg.power:.0%} "
        f"power (from the pilot's SEs) needs {fixed['n']} prompts for every configuration: "
        f"{fixed['tokens']:,.0f} tokens, about {fixed['seconds']:.0f} s at the study's rate"
        + (f": the study used {fixed['study_tokens'] / fixed['tokens']:.0%} of its tokens."
           if fixed["tokens"] else ".")]
    return "\n".join(lines) + "\n"


def write_outputs(study: Study, jobs: dict[str, Job]) -> None:
    if not study.state["looks"]:
        return
    frame = table(study, jobs)
    fixed = fixed_design(study, jobs)
    for name, text in ((TABLE, frame.to_csv(index=False)),
                       (REPORT, render(study, frame, fixed))):
        temporary = study.dir / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, study.dir / name)
    log_study(study, frame, fixed)


def log_study(study: Study, frame: pd.DataFrame, fixed: dict) -> None:
    """The study's one W&B run (job type ``study``, the sweep's group), written whole after
    every look: the decisions table, the looks and the cost. Its own run, not the analyze
    run's: an analysis rewrites that one whole (offline, deleting its earlier folders)."""
    from harness.tracking import replace_earlier, wandb_run

    id_file = study.dir / STUDY_RUN_ID
    group = sweep_path(study.command.sweep).stem
    with wandb_run(study.analysis.wandb, study.dir,
                   id=id_file.read_text().strip() if id_file.exists() else None,
                   resume="allow", job_type="study", group=group, name=f"study-{group}",
                   config=study.state["command"]) as run:
        if run is None:
            return
        import wandb

        id_file.write_text(run.id)
        looks = pd.DataFrame(study.state["looks"])
        run.log({"study": wandb.Table(dataframe=frame.astype(object).where(frame.notna(),
                                                                            None)),
                 "looks": wandb.Table(dataframe=looks)})
        counts = frame["decision"].value_counts()
        run.summary_update({**{f"decisions/{d}": int(counts.get(d, 0)) for d in (
            sequential.DIFFERENT, sequential.WITHIN, sequential.IDENTICAL,
            sequential.UNDECIDED)}, "looks_done": len(looks), "tokens": fixed["study_tokens"],
            "seconds": fixed["study_seconds"], "fixed_n": fixed["n"],
            "fixed_tokens": fixed["tokens"]})
        offline, folder = run.wandb_run.offline, Path(run.wandb_run.settings.sync_dir)
        complete = not run.failed
    if offline and complete:
        replace_earlier(study.dir, run.id, folder)


# ---- entry -----------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        command = Command.parse(argv)
        load_sweep(command.sweep)
        cfg = study_config(command.study_overrides)
        validate(cfg)
        analysis = load_config(command.analysis_overrides)
        study = Study(command, cfg, analysis)
        study.load()
    except (ValueError, SweepFileError) as error:
        log.error("%s", " ".join(str(error).split()))
        sys.exit(1)
    try:
        study.run()
    except KeyboardInterrupt:
        log.error("interrupted: the looks in %s are kept; re-running the same command "
                  "continues from the last complete one.", study.dir / STATE)
        sys.exit(130)
    except SystemExit as stop:
        if stop.code:
            why = "interrupted" if stop.code == 130 else "a launch failed (above)"
            log.error("%s; re-running the same command continues the study from its last "
                      "complete look (%s).", why, study.dir / STATE)
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
