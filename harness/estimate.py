"""Before a long generation starts, say how long: the new tokens it will generate, and the time
at the last rate measured for the same model on the same kind of device (an earlier
``timing.json`` beside the job dirs: the sweep's other jobs, or the job's own last run).

A generation is "long" above ``LONG_SECONDS`` at that rate or, with no rate known, above
``LONG_TOKENS`` tokens (SmolLM2 on a CPU makes tens to a few hundred tokens per second, so that
is minutes to hours)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from harness.records import JOB, TIMING

log = logging.getLogger(__name__)

LONG_SECONDS = 600
LONG_TOKENS = 100_000


def device_kind(device: torch.device) -> str:
    """As ``timing.json`` names the device: the GPU's name, or the CPU and its threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu, {torch.get_num_threads()} threads"


@dataclass(frozen=True)
class Rate:
    tokens_per_s: float
    source: Path  # the timing.json it was measured in


def measured_rate(job_dirs: Iterable[Path], model: str, device: str) -> Rate | None:
    """The rate of the newest ``timing.json`` beside (or in) ``job_dirs`` whose job ran
    ``model`` on ``device``."""
    found = []
    for path in {p for job_dir in job_dirs for p in job_dir.parent.glob(f"*/{TIMING}")}:
        try:
            timing = json.loads(path.read_text())
            ran = (yaml.safe_load((path.parent / JOB).read_text()) or {}).get("model", {})
            when = path.stat().st_mtime
        except (OSError, ValueError, yaml.YAMLError, AttributeError):
            continue  # a dir being written, or not a job's: no rate from it
        rate = timing.get("tokens_per_s") if isinstance(timing, dict) else None
        if (isinstance(ran, dict) and ran.get("name") == model and timing.get("device") == device
                and isinstance(rate, (int, float)) and rate > 0):
            found.append((when, Rate(float(rate), path)))
    return max(found, key=lambda pair: pair[0])[1] if found else None


def duration(seconds: float) -> str:
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def long_run_warning(rows: int, new_tokens: int, model: str, device: str,
                     rate: Rate | None) -> str | None:
    """The line to print before ``rows`` rows of up to ``new_tokens`` tokens, if it is long."""
    tokens = rows * new_tokens
    size = f"{tokens:,} new tokens to generate ({rows:,} rows x {new_tokens} tokens)"
    advice = ("lower dataset.limit (or generation.seeds) to try it first; Ctrl-C stops after the "
              "batch in flight and re-running resumes.")
    if rate is not None:
        seconds = tokens / rate.tokens_per_s
        if seconds <= LONG_SECONDS:
            return None
        return (f"{size}: about {duration(seconds)} at {rate.tokens_per_s:,.3g} tokens/s, the "
                f"rate last measured for model {model!r} on {device} ({rate.source}); {advice}")
    if tokens <= LONG_TOKENS:
        return None
    return (f"{size}: no rate known for model {model!r} on {device} (no timing.json of it beside "
            f"this job dir), so no time estimate; {advice}")


def warn_if_long(rows: int, new_tokens: int, job_dirs: Iterable[Path], model: str,
                 device: torch.device) -> None:
    kind = device_kind(device)
    warning = long_run_warning(rows, new_tokens, model, kind, measured_rate(job_dirs, model, kind))
    if warning:
        log.warning("%s", warning)
