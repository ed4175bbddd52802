"""Every check of a job before Hydra writes anything for it.

Hydra's ``run_job`` creates the job dir and writes ``.hydra/`` and the job's log before it calls
the task, so a check in the task comes too late: a refused run would already have overwritten
an existing job's ``.hydra/`` (from which the analysis plan rebuilds its commands) or left a new
dir behind. ``check_job`` runs the checks that need no model and no dataset (the config, the job
dir's records and lock, whether the dir can be written) on the composed config; a single run
calls it from ``Preflight.on_run_start`` (``hydra.callbacks.preflight`` in ``conf/config.yaml``),
a multirun from the sweeper, for every job before any launches (``hydra/sweeper=harness``)."""

from __future__ import annotations

import copy
import os
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def job_dir_and_config(config: DictConfig, multirun: bool = True) -> tuple[Path, DictConfig]:
    """The dir Hydra's ``run_job`` will give this job (``hydra.sweep.dir/subdir`` or
    ``hydra.run.dir``), and the job's own config."""
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)  # the dir names use ${hydra:job.override_dirname}
    try:
        hydra = config.hydra
        job_dir = Path(str(hydra.sweep.dir), str(hydra.sweep.subdir)) if multirun else Path(
            str(hydra.run.dir))
    finally:
        if saved is not None:
            HydraConfig.instance().set_config(saved)
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return job_dir.absolute(), task


def check_job(config: DictConfig, multirun: bool, here: bool = True) -> str | None:
    """``job NAME: what is wrong and what to do`` if this job would be refused, else None.
    ``here=False``: the job runs on another machine (``runner.validate``)."""
    from harness.runner import JobError, check_job_dir, validate  # torch

    job_dir, task = job_dir_and_config(config, multirun)
    try:
        validate(task, here=here)
        check_job_dir(task, job_dir, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    except (JobError, OmegaConfBaseException) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # Hydra's callbacks swallow a raise
            traceback.print_exception(error)
        return f"job {job_dir.name}: {one_line(error)}"
    return None


# The returns of the jobs that ended in this process, by overrides: when a launcher stops on an
# OSError (a full disk fails Hydra's own writes), the sweeper knows which jobs it had finished.
ENDED: dict[tuple[str, ...], JobReturn] = {}


class Preflight(Callback):
    """A single run's checks, before ``run_job`` creates the job dir: a refused run writes
    nothing (exit 1, its one line). It also keeps every job's return (``ENDED``)."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        ENDED[tuple(job_return.overrides or ())] = job_return

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = check_job(config, multirun=False)
        if problem:
            raise SystemExit(problem)  # the interpreter prints it on stderr; exit 1
