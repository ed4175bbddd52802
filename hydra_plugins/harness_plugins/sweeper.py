"""``hydra/sweeper=harness`` (the default of ``python -m harness -m``): Hydra's basic sweeper,
plus two things a multirun of the harness needs.

- Before any job runs, two jobs that would write one job dir are refused. They differ only in
  keys that do not name a dir (``dataset.limit``, ``generation.seeds``,
  ``generation.batch_size``, ...), so they would write one set of records, one ``job.yaml`` and
  one W&B run under two configs. Merging them would run a config that nobody typed; one job
  with the union (the larger limit, all seeds) extends the same dir, so the error says that.
- A failing job does not stop the others: every job runs, each failure is logged with its own
  line by the job, and the multirun ends with one line summing them up (exit 1).
"""

import copy
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


class MultirunError(CompactHydraException):
    """One line for the user; Hydra prints it without a traceback (unless HYDRA_FULL_ERROR)."""


@dataclass
class HarnessSweeperConf:
    _target_: str = "hydra_plugins.harness_plugins.sweeper.HarnessSweeper"
    max_batch_size: int | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="harness", node=HarnessSweeperConf,
                             provider="decoding-harness")


def job_dir_and_config(config: DictConfig) -> tuple[Path, DictConfig]:
    """The dir Hydra's ``run_job`` will give this sweep job, and the job's own config."""
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        job_dir = Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)).absolute()
    finally:
        if saved is not None:
            HydraConfig.instance().set_config(saved)
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return job_dir, task


def failure_summary(returns: Sequence[JobReturn]) -> str | None:
    """``3 of 11 jobs failed: jobs a, b: why; job c: other why. Re-run ...``, or None: each
    distinct reason once, with the jobs it hit (a failed cluster task fails all its jobs with
    one message)."""
    failed = [r._return_value for r in returns if r.status == JobStatus.FAILED]
    if not failed:
        return None
    jobs: dict[str, list[str]] = {}
    for error in failed:
        text = (" ".join(str(error).split()) or type(error).__name__).rstrip(".")
        named = re.match(r"job (.+?): (.*)", text)
        reason, job = (named[2], named[1]) if named else (text, "")
        jobs.setdefault(reason, []).append(job)
    reasons = "; ".join(f"{hit_jobs(names)}: {reason}" if any(names) else reason
                        for reason, names in jobs.items())
    return (f"{len(failed)} of {len(returns)} jobs failed: {reasons}. Re-run the same command "
            "to retry them once their input is fixed (finished jobs are skipped).")


def hit_jobs(names: list[str], shown: int = 3) -> str:
    names = [name for name in names if name]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"job{'s' if len(names) > 1 else ''} {', '.join(names[:shown])}{more}"


class HarnessSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        """BasicSweeper.sweep, except that shared dirs are refused before any job runs and
        failed jobs are summed up at the end instead of raising the first."""
        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        params = [*self._parse_config(), *arguments]
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params),
                                              self.max_batch_size)
        batches = list(self.overrides)
        for batch in batches:
            self.validate_batch_is_legal(batch)
        self.refuse_shared_dirs([job for batch in batches for job in batch])
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, done = [], 0
        for batch in batches:
            returns.append(self.launcher.launch(batch, initial_job_idx=done))
            done += len(batch)
        summary = failure_summary([r for batch in returns for r in batch])
        if summary:
            raise MultirunError(summary)
        return returns

    def refuse_shared_dirs(self, jobs: list[Sequence[str]]) -> None:
        assert self.config is not None and self.hydra_context is not None
        by_dir: dict[Path, list[Sequence[str]]] = {}
        for overrides in jobs:
            config = self.hydra_context.config_loader.load_sweep_config(self.config,
                                                                        list(overrides))
            by_dir.setdefault(job_dir_and_config(config)[0], []).append(overrides)
        for job_dir, same in by_dir.items():
            if len(same) > 1:
                differ = sorted({o for overrides in same for o in overrides}
                                - set.intersection(*(set(o) for o in same)))
                raise MultirunError(
                    f"{len(same)} jobs of this multirun would write one job dir, {job_dir}: "
                    f"they differ only in {', '.join(differ)}, which do not name a dir (they do "
                    "not change a record). Run one job with the union instead (the larger "
                    "dataset.limit, all generation.seeds): a larger limit or a new seed extends "
                    "the same dir.")
