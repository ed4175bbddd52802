"""``python -m analysis SWEEP_DIR [SWEEP_DIR ...] [key=value ...]``: metrics, tables, plots.

Writes into the first sweep dir: summary.csv/.md/.tex, per_seed.csv and plots/*.png, and logs
them to one W&B run (offline by default). Overrides are Hydra's, on ``conf/analysis.yaml``:
e.g. ``metrics.mauve.featurizer=lm:gpt2-large`` or ``wandb=disabled``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from analysis import features
from analysis.load import DuplicateMismatch, find_jobs
from analysis.plan import PlanConfig, plan_sweep
from analysis.plots import make_plots
from analysis.stats import BootstrapConfig
from analysis.table import (
    KEYS,
    MetricsConfig,
    configuration,
    human_rows,
    job_rows,
    summarize,
    write_tables,
)
from analysis.uncertainty import BaselineConfig, add_uncertainty
from harness.tracking import WandbConfig, wandb_run

log = logging.getLogger("analysis")
CONF = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class AnalysisConfig:
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    write_back: bool = True  # add each job's metrics to its generation run's W&B summary


ConfigStore.instance().store(name="analysis_schema", node=AnalysisConfig)


def load_config(overrides: list[str]) -> AnalysisConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_object(compose("analysis", overrides=overrides))


def analyse(sweep_dirs: list[Path], cfg: AnalysisConfig) -> pd.DataFrame:
    """Analyse every job under ``sweep_dirs``; a job that fails is reported and left blank."""
    jobs = find_jobs(sweep_dirs)
    out = sweep_dirs[0]
    rows, texts = [], []
    for job in tqdm(jobs, desc="analysing jobs", unit="job"):
        try:
            rows += job_rows(job, cfg.metrics, texts)
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            log.error("job %s could not be analysed: %s", job.name, error)
            rows.append({**configuration(job), "n": len(job.records), "seed": 0})
    try:
        rows += human_rows(jobs, cfg.metrics, texts)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        log.error("the human references could not be analysed: %s", error)
    per_seed, per_text = pd.DataFrame(rows), pd.DataFrame(texts)
    summary = summarize(per_seed)
    summary, notes = add_uncertainty(summary, per_text, jobs, cfg.metrics.mauve, cfg.bootstrap,
                                     cfg.baseline, [k for k in KEYS if k in summary])
    set_aside = sum(job.set_aside for job in jobs)
    if set_aside:
        notes.append(f"{set_aside} records outside the prompts every configuration finished "
                     "were set aside: every row is over the same prompts.")
    markdown = write_tables(per_seed, summary, per_text, out, cfg.metrics.mauve.min_samples,
                            notes)
    plots = make_plots(summary, out / "plots")
    plan, plan_markdown = plan_sweep(summary, per_text, jobs, cfg.metrics.mauve, cfg.baseline,
                                     cfg.plan, [k for k in KEYS if k in summary], out)
    with wandb_run(cfg.wandb, out, job_type="analyze", group=out.name,
                   name=f"analyze-{out.name}", config=OmegaConf.to_container(
                       OmegaConf.structured(cfg))) as run:
        if run is not None:
            import wandb

            run.log({"summary": wandb.Table(dataframe=summary.astype(object).where(
                summary.notna(), None)),
                     "per_seed": wandb.Table(dataframe=per_seed.drop(
                         columns=["mauve_values"], errors="ignore").astype(str)),
                     "plan": wandb.Table(dataframe=plan.astype(str)),
                     **{f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}})
    if cfg.write_back and cfg.wandb.mode != "disabled":
        write_back(jobs, per_seed, cfg.wandb, out)
    print(markdown + "\n" + plan_markdown)
    log.info("wrote %s/summary.{csv,md,tex}, per_seed.csv, per_text.csv and %d plots; embedded "
             "%d texts (everything else came from the cache)", out, len(plots),
             features.stats["embedded"])
    return summary


def write_back(jobs, per_seed: pd.DataFrame, wandb_cfg: WandbConfig, out: Path) -> None:
    """Each job's metrics into its generation run's summary (runs whose id the runner saved)."""
    for job in jobs:
        ids = [d / "wandb_run_id" for d in job.dirs if (d / "wandb_run_id").exists()]
        rows = per_seed[per_seed["job"] == job.name].drop(columns=["mauve_values"],
                                                          errors="ignore")
        metrics = rows.mean(numeric_only=True).dropna().to_dict()
        for id_file in ids:
            with wandb_run(wandb_cfg, out, id=id_file.read_text().strip(),
                           resume="allow") as run:
                if run is not None:
                    run.summary_update({f"analysis/{k}": v for k, v in metrics.items()})


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    dirs = [Path(a) for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    if not dirs:
        raise SystemExit(__doc__)
    try:
        analyse(dirs, load_config(overrides))
    except (FileNotFoundError, DuplicateMismatch) as error:
        log.error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
