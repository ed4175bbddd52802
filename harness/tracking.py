"""Weights & Biases, for both entry points: one context manager that always finishes the run
and never fails the work it tracks, and ``publish_job``, which writes a configuration's one run.

One run per configuration (job dir), whose id the job dir keeps in ``wandb_run_id``. It is
written from what the job dir holds (``job.yaml``, ``timing_history.jsonl``, the records) plus,
from the analysis, the configuration's metrics, so every write of it is complete:
- online, W&B resumes the run by id and updates it in place (this invocation's timing as a new
  history step, the summed timing and the metrics in the summary);
- offline, W&B cannot resume: each write is a new ``offline-run-*-<id>`` folder holding the
  whole run (every invocation's timing as history, the samples table, the metrics), and the
  earlier folders of that id are deleted once it is finished. ``wandb sync`` of a sweep's
  ``wandb/offline-run-*`` therefore uploads exactly one complete run per configuration.
A generation that wrote no new record leaves the run as it is (no empty duplicate).

An online run that cannot start (no API key, no network, a host that does not answer within
``wandb.init_timeout`` seconds) is written offline instead, with one warning naming the
``wandb sync`` command that uploads it later. A W&B error after the start is logged and
tracking stops for that run; the records are never affected.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.records import JOB, RECORDS, parse

log = logging.getLogger(__name__)


@dataclass
class WandbConfig:
    """``conf/wandb/*.yaml``. Offline by default: runs land under ``<sweep dir>/wandb``."""

    mode: str = "offline"  # offline | online | disabled
    project: str = "decoding-harness"
    entity: str | None = None
    init_timeout: float = 30.0  # seconds an online start may take before going offline


class Run:
    """A started W&B run whose calls log their errors instead of raising them."""

    def __init__(self, run: Any) -> None:
        self.wandb_run = run
        self.id: str = run.id
        self.failed = False

    def _safely(self, what: str, call: Callable[[], object]) -> None:
        if self.failed:
            return
        try:
            call()
        except Exception as error:  # W&B's own errors are many and undocumented
            self.failed = True
            log.warning("W&B %s failed (%s); tracking of run %s stops here, the work goes on.",
                        what, error, self.id)

    def log(self, data: dict) -> None:
        self._safely("log", lambda: self.wandb_run.log(data))

    def summary_update(self, data: dict) -> None:
        self._safely("summary update", lambda: self.wandb_run.summary.update(data))

    def log_table(self, key: str, columns: list[str], data: list[list]) -> None:
        import wandb

        self._safely("log", lambda: self.wandb_run.log({key: wandb.Table(columns=columns,
                                                                         data=data)}))


MODES = ("offline", "online", "disabled")


def check_wandb(cfg: WandbConfig) -> None:
    """The W&B settings, checked by both entry points before any work."""
    if cfg.mode not in MODES:
        raise ValueError(f"wandb.mode={cfg.mode!r} is not known; use {', '.join(MODES)} "
                         "(e.g. wandb=offline).")
    if not cfg.init_timeout > 0:
        raise ValueError(f"wandb.init_timeout={cfg.init_timeout} must be > 0 seconds.")
    if not cfg.project:
        raise ValueError("wandb.project is empty; name a project, e.g. "
                         "wandb.project=decoding-harness.")


def start(cfg: WandbConfig, directory: Path, init: dict) -> Any:
    """``wandb.init`` in ``cfg.mode``; online falls back to offline on any failure to start."""
    import wandb

    settings = wandb.Settings(console="off", init_timeout=cfg.init_timeout)
    common = dict(project=cfg.project, entity=cfg.entity, dir=str(directory),
                  reinit="create_new", settings=settings, **init)
    if cfg.mode == "online":
        try:
            return wandb.init(mode="online", **common)
        except Exception as error:  # UsageError (no key), CommError, timeouts, ...
            log.warning("W&B could not start online (%s). This run is written offline instead; "
                        "upload it later with `wandb sync %s/wandb/offline-run-*`.",
                        str(error).splitlines()[0] if str(error) else type(error).__name__,
                        directory)
    return wandb.init(mode="offline", **common)


@contextmanager
def wandb_run(cfg: WandbConfig, directory: Path, **init: Any) -> Iterator[Run | None]:
    """A W&B run (``None`` when disabled), finished however the block ends, so that the jobs
    of one multirun process never merge into one run."""
    check_wandb(cfg)
    if cfg.mode == "disabled":
        yield None
        return
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        run = Run(start(cfg, directory, init))
    except Exception as error:
        log.warning("W&B could not start even offline (%s); this run is not tracked.", error)
        yield None
        return
    try:
        yield run
    finally:
        try:
            run.wandb_run.finish()
        except Exception as error:
            log.warning("W&B run %s could not finish cleanly (%s).", run.id, error)


RUN_ID = "wandb_run_id"  # in a job dir: the id of its configuration's W&B run
TIMINGS = "timing_history.jsonl"  # in a job dir: timing.json of every invocation that generated
SAMPLE_COLUMNS = ["prompt_id", "seed", "prompt", "continuation", "reference"]


def runs_root(job_dir: Path) -> Path:
    """Where a job's runs live (``<root>/wandb``): its sweep dir in a multirun (Hydra leaves
    ``multirun.yaml`` there), else the job dir itself."""
    return job_dir.parent if (job_dir.parent / "multirun.yaml").exists() else job_dir


def offline_folders(root: Path, run_id: str) -> list[Path]:
    return sorted((root / "wandb").glob(f"offline-run-*-{run_id}"))


def summed(timings: list[dict]) -> dict:
    """The job's generation over all its invocations (each one stays in the run's history).
    ``tokens_per_s`` is, as in timing.json, the rate of the whole (fused) generation the job
    was part of: its tokens plus its batch-mates', over the shared seconds."""
    seconds = sum(t.get("generate_seconds", 0.0) for t in timings)
    tokens = sum(t.get("new_tokens", 0) for t in timings)
    generated = sum(t.get("fused_new_tokens", t.get("new_tokens", 0)) for t in timings)
    return {"invocations": len(timings), "generate_seconds": seconds, "new_tokens": tokens,
            "records": sum(t.get("records", 0) for t in timings),
            "tokens_per_s": generated / seconds if seconds else 0.0}


def publish_job(cfg: WandbConfig, job_dir: Path, root: Path | None = None, *,
                invocation: dict | None = None, metrics: dict | None = None) -> str | None:
    """Write (online: update) the W&B run of the configuration in ``job_dir`` under
    ``root/wandb`` (default ``runs_root``), as the module says; ``invocation``: the timing of a
    generation that just wrote records; ``metrics``: the analysis's. Returns the run id."""
    if cfg.mode == "disabled":
        return None
    root = root or runs_root(job_dir)
    config = yaml.safe_load((job_dir / JOB).read_text())
    id_file = job_dir / RUN_ID
    run_id = id_file.read_text().strip() if id_file.exists() else None
    history = job_dir / TIMINGS
    timings = [json.loads(line) for line in history.read_text().splitlines() if line.strip()
               ] if history.exists() else []
    selector = config["selector"]
    with wandb_run(cfg, root, id=run_id, resume="allow", config=config, job_type="generate",
                   group=config.get("sweep"), name=job_dir.name,
                   tags=[selector["method"], config["model"]["name"], config["dataset"]["name"]],
                   ) as run:
        if run is None:
            return None
        id_file.write_text(run.id)
        offline = bool(getattr(run.wandb_run, "offline", True))
        for timing in timings if offline else [invocation] if invocation else []:
            run.log(timing)
        run.summary_update(summed(timings))
        if offline or invocation:
            records = parse(job_dir / RECORDS).records if (job_dir / RECORDS).exists() else []
            samples = records[: config["generation"].get("samples_to_log", 16)]
            if samples:
                run.log_table("samples", SAMPLE_COLUMNS,
                              [[s[c] for c in SAMPLE_COLUMNS] for s in samples])
        if metrics:
            run.summary_update(metrics)
        folder = Path(run.wandb_run.settings.sync_dir)
        complete = not run.failed
    if offline and complete:
        replace_earlier(root, run.id, folder)
    return run.id


def replace_earlier(root: Path, run_id: str, newest: Path) -> None:
    """Delete the earlier offline folders of ``run_id``: ``newest`` holds all they held."""
    for folder in offline_folders(root, run_id):
        if folder.resolve() != newest.resolve():
            shutil.rmtree(folder, ignore_errors=True)
