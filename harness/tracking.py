"""Weights & Biases, for both entry points: one context manager that always finishes the run
and never fails the work it tracks.

An online run that cannot start (no API key, no network, a host that does not answer within
``wandb.init_timeout`` seconds) is written offline instead, with one warning naming the
``wandb sync`` command that uploads it later. A W&B error after the start is logged and
tracking stops for that run; the records are never affected.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
