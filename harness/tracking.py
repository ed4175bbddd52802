"""Weights & Biases, for both entry points: one context manager that always finishes the run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class WandbConfig:
    """``conf/wandb/*.yaml``. Offline by default: runs land under ``<sweep dir>/wandb``."""

    mode: str = "offline"  # offline | online | disabled
    project: str = "decoding-harness"
    entity: str | None = None


@contextmanager
def wandb_run(cfg: WandbConfig, directory: Path, **init: Any) -> Iterator[Any]:
    """A W&B run (``None`` when disabled), finished however the block ends, so that the jobs
    of one multirun process never merge into one run."""
    if cfg.mode not in ("offline", "online", "disabled"):
        raise ValueError(f"wandb.mode={cfg.mode!r} is not known; use offline, online or disabled.")
    if cfg.mode == "disabled":
        yield None
        return
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(mode=cfg.mode, project=cfg.project, entity=cfg.entity, dir=str(directory),
                     reinit="create_new", settings=wandb.Settings(console="off"), **init)
    try:
        yield run
    finally:
        run.finish()
