"""``python -m analysis SWEEP_DIR [SWEEP_DIR ...] [key=value ...] [--debug]``: metrics, tables,
plots.

Writes into the first sweep dir, as one set (``analysis.outputs``: a failed analysis leaves the
previous set): summary.csv/.md/.tex, summary_full.tex, samples.tex, report.html, per_seed.csv,
per_text.csv, plan.csv/.md and plots/*.png; then logs
them to one W&B run (offline by default; group: the sweeps' name) whose id the dir keeps, so a
re-analysis replaces it; each configuration's metrics, intervals, Δs and p-values go into its
generation run (``harness.tracking.publish_job``). Overrides are Hydra's, on
``conf/analysis.yaml``: e.g. ``metrics.mauve.featurizer=lm:gpt2-large`` or ``wandb=disabled``.
A mistake in the input is one line and exit 1, before any work; ``--debug`` shows the
traceback.
"""

# ruff: noqa: E402  (the imports follow the Ctrl-C handler that covers them)
from __future__ import annotations

import logging
import os
import signal
import sys

INTERRUPTED = ("interrupted: the job dirs are untouched (the analysis only reads them); "
               "re-running the same command redoes the tables from its caches.")

if __name__ == "__main__":  # a Ctrl-C during the imports below (seconds): nothing is written yet
    signal.signal(signal.SIGINT, lambda *_: (print(f"[analysis] {INTERRUPTED}", file=sys.stderr,
                                                   flush=True), os._exit(130)))

import _thread
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from analysis import features
from analysis.latex import TableConfig, write_samples
from analysis.load import DuplicateMismatch, find_jobs, load_notes
from analysis.outputs import output_set
from analysis.plan import PlanConfig, plan_sweep
from analysis.plots import make_plots
from analysis.render import write_tables
from analysis.report import ReportConfig, write_report
from analysis.stats import BootstrapConfig
from analysis.table import (
    MetricsConfig,
    configuration,
    human_rows,
    job_rows,
    parameters,
    per_text_frame,
    settings,
    summarize,
)
from analysis.uncertainty import BaselineConfig, add_uncertainty, check_baseline
from harness.tracking import (
    RUN_ID,
    WandbConfig,
    check_wandb,
    publish_job,
    replace_earlier,
    runs_root,
    wandb_run,
)

log = logging.getLogger("analysis")
CONF = Path(__file__).resolve().parent.parent / "conf"
ANALYZE_RUN_ID = "wandb_analyze_run_id"  # in the output dir: the analysis run's id
# The fewest resamples in each tail of a percentile interval: its endpoint is then the 25th
# most extreme of them, not the 1st or 3rd (bootstrap.samples >= 1000 at a 95% level).
TAIL_RESAMPLES = 25


@dataclass
class AnalysisConfig:
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    table: TableConfig = field(default_factory=TableConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    write_back: bool = True  # add each job's metrics to its generation run's W&B summary


ConfigStore.instance().store(name="analysis_schema", node=AnalysisConfig)


def load_config(overrides: list[str]) -> AnalysisConfig:
    # baseline.params is an open mapping (any selector's parameters): its keys are added.
    overrides = [f"++{o}" if o.startswith("baseline.params.") else o for o in overrides]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_object(compose("analysis", overrides=overrides))


def validate(sweep_dirs: list[Path], cfg: AnalysisConfig) -> None:
    """Every check that needs no data: a mistake fails before anything is read or written."""
    for sweep in sweep_dirs:
        if not sweep.is_dir():
            raise ValueError(f"sweep dir {sweep} does not exist; pass the dir that "
                             "python -m harness -m wrote (e.g. multirun/seed_comparison).")
    check_wandb(cfg.wandb)
    mauve, coherence, boot = cfg.metrics.mauve, cfg.metrics.coherence, cfg.bootstrap
    for key, value in (("metrics.mauve.featurizer", mauve.featurizer),
                       ("metrics.coherence.embedder", coherence.embedder)):
        if value not in ("minilm", "generator") and not value.startswith("lm:"):
            raise ValueError(f"{key}={value!r} is not known; use minilm, lm:<model name or "
                             "folder>, or generator.")
    for key, value in (("metrics.mauve.max_tokens", mauve.max_tokens),
                       ("metrics.mauve.kmeans_seeds", mauve.kmeans_seeds),
                       ("metrics.coherence.max_tokens", coherence.max_tokens),
                       ("metrics.coherence.batch_size", coherence.batch_size),
                       ("bootstrap.samples", boot.samples)):
        if value < 1:
            raise ValueError(f"{key}={value} must be >= 1.")
    if not 0 < boot.level < 1:
        raise ValueError(f"bootstrap.level={boot.level} must be in (0, 1), e.g. 0.95.")
    floor = math.ceil(TAIL_RESAMPLES / ((1 - boot.level) / 2) - 1e-9)
    if boot.samples < floor:
        raise ValueError(
            f"bootstrap.samples={boot.samples} is below {floor}, the fewest for a "
            f"{boot.level:.0%} interval: each of its {(1 - boot.level) / 2:.1%} tails must rest "
            f"on at least {TAIL_RESAMPLES} resamples, else its endpoints are a few draws' noise "
            f"(Efron & Tibshirani ask >= 1000 at 95%); use bootstrap.samples={floor} or more "
            "(default 10000).")


def analyse(sweep_dirs: list[Path], cfg: AnalysisConfig) -> pd.DataFrame:
    """Analyse every job under ``sweep_dirs``; a job that fails is reported and left blank."""
    jobs = find_jobs(sweep_dirs)
    missing_baseline = check_baseline(pd.DataFrame([configuration(job) for job in jobs]),
                                      cfg.baseline, parameters(jobs))
    out = sweep_dirs[0]
    rows, texts = [], []
    for job in tqdm(jobs, desc="analysing jobs", unit="job"):
        try:
            job_seed_rows, job_texts = job_rows(job, cfg.metrics)
            rows, texts = rows + job_seed_rows, texts + job_texts
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            log.error("job %s could not be analysed: %s", job.name, error)
            rows.append({**configuration(job), "n": len(job.records), "seed": 0})
    try:
        human_seed_rows, human_texts = human_rows(jobs, cfg.metrics)
        rows, texts = rows + human_seed_rows, texts + human_texts
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        log.error("the human references could not be analysed: %s", error)
    per_seed, per_text = pd.DataFrame(rows), per_text_frame(texts)
    summary = summarize(per_seed, per_text, jobs)
    summary, notes = add_uncertainty(summary, per_text, jobs, cfg.metrics.mauve, cfg.bootstrap,
                                     cfg.baseline, parameters(jobs))
    notes = [*([missing_baseline] if missing_baseline else []), *notes,
             *load_notes(sweep_dirs, jobs)]
    with output_set(out) as staging:  # all outputs replace the previous ones, or none does
        markdown = write_tables(per_seed, summary, per_text, staging,
                                cfg.metrics.mauve.min_samples, notes, cfg.table.latex,
                                cfg.bootstrap)
        plots = make_plots(summary, staging / "plots")
        plan, plan_markdown = plan_sweep(summary, per_text, jobs, cfg.metrics.mauve,
                                         cfg.baseline, cfg.plan,
                                         ["method", *parameters(jobs), *settings(jobs), "model",
                                          "dataset", "max_new_tokens"], staging)
        write_samples(summary, jobs, staging, cfg.table.latex)
        study = out / "study.md"  # python -m harness.study's decisions, where one ran here
        report = write_report(summary, jobs, staging, cfg.report, plots, notes, plan_markdown,
                              cfg.table.latex, study.read_text() if study.exists() else None)
    plots, report = [out / "plots" / p.name for p in plots], out / report.name
    log_analysis(cfg, out, jobs, summary, per_seed, plots, report, plan)
    if cfg.write_back:
        write_back(jobs, summary, cfg.wandb)
    print(markdown + "\n" + plan_markdown)
    log.info("wrote %s/summary.{csv,md,tex}, per_seed.csv, per_text.csv and %d plots; embedded "
             "%d texts (everything else came from the cache)", out, len(plots),
             features.stats["embedded"])
    return summary


def log_analysis(cfg: AnalysisConfig, out: Path, jobs: list, summary: pd.DataFrame,
                 per_seed: pd.DataFrame, plots: list[Path], report: Path,
                 plan: pd.DataFrame) -> None:
    """The one analyze run of ``out``: tables and plots, in the sweeps' W&B group. Its id is
    kept in ``out``, so a re-analysis updates it (online) or replaces its folder (offline)."""
    id_file = out / ANALYZE_RUN_ID
    sweeps = sorted({str(job.config.get("sweep", out.name)) for job in jobs})
    with wandb_run(cfg.wandb, out, id=id_file.read_text().strip() if id_file.exists() else None,
                   resume="allow", job_type="analyze", group="+".join(sweeps),
                   name=f"analyze-{'+'.join(sweeps)}",
                   config=OmegaConf.to_container(OmegaConf.structured(cfg))) as run:
        if run is None:
            return
        import wandb

        id_file.write_text(run.id)
        run.log({"summary": wandb.Table(dataframe=summary.astype(object).where(
            summary.notna(), None)),
                 "per_seed": wandb.Table(dataframe=per_seed.drop(
                     columns=["mauve_values"], errors="ignore").astype(str)),
                 **{f"plots/{p.stem}": wandb.Image(str(p)) for p in plots},
                 "plan": wandb.Table(dataframe=plan.astype(str)),
                 "report": wandb.Html(str(report), inject=False)})
        offline, folder = run.wandb_run.offline, Path(run.wandb_run.settings.sync_dir)
        complete = not run.failed
    if offline and complete:
        replace_earlier(out, run.id, folder)


def metrics_of(job, summary: pd.DataFrame) -> dict:
    """The job's summary row without the columns that name the configuration (method, its
    parameters, references): metrics, intervals, Δs and p-values."""
    rows = summary[(summary["config"] == job.config_id) & (summary["method"] != "human")]
    if rows.empty:
        return {}
    naming = {*configuration(job), *parameters([job])}
    return {k: float(v) for k, v in rows.iloc[0].items()
            if k not in naming and pd.api.types.is_number(v) and pd.notna(v)}


def write_back(jobs: list, summary: pd.DataFrame, wandb_cfg: WandbConfig) -> None:
    """Each configuration's metrics, intervals, Δs and Holm p-values into its W&B run (every
    dir of it whose run the runner started), written whole (``publish_job``)."""
    if wandb_cfg.mode == "disabled":
        return
    for job in jobs:
        metrics = metrics_of(job, summary)
        for job_dir in job.dirs:
            if (job_dir / RUN_ID).exists():
                publish_job(wandb_cfg, job_dir, runs_root(job_dir), metrics=metrics)


def stop_on_ctrl_c() -> None:
    """Ctrl-C always ends the analysis (exit 130, one line): the default handler raises
    KeyboardInterrupt wherever Python is, and one raised in a weakref callback or a ``__del__``
    is only printed ("Exception ignored ...") while the analysis runs on, so such a one is
    raised again in the main thread."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _thread.interrupt_main()
        else:
            default(unraisable)

    sys.unraisablehook = hook


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    # mauve-text imports faiss, whose loader logs (INFO) each failed try of an optimised build
    # before the plain one loads: the expected fallback, twelve lines of tracebacks
    logging.getLogger("faiss").setLevel(logging.WARNING)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    dirs = [Path(a) for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    if not dirs or any(str(d).startswith("-") for d in dirs):
        raise SystemExit(__doc__)
    try:
        try:
            cfg = load_config(overrides)
        except (HydraException, OmegaConfBaseException) as error:
            why = str(error).splitlines()[0]
            if error.__cause__ is not None:  # Hydra's "Error merging override": the reason
                why += f" ({str(error.__cause__).splitlines()[0]})"
            raise ValueError(f"analysis overrides {' '.join(overrides)}: {why}") from error
        validate(dirs, cfg)
        analyse(dirs, cfg)
    except KeyboardInterrupt:
        log.error("%s", INTERRUPTED)
        sys.exit(130)
    except (ValueError, FileNotFoundError, DuplicateMismatch) as error:
        if debug:
            raise
        log.error("%s", " ".join(str(error).split()))
        sys.exit(1)


if __name__ == "__main__":
    stop_on_ctrl_c()
    main(sys.argv[1:])
