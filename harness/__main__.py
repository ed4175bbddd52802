"""``python -m harness``: the Hydra entry point (one job per config; ``-m`` for grids).

Input mistakes end in one line naming the key, the value and what to do, and exit 1 (a full
traceback with ``HYDRA_FULL_ERROR=1``); those found without the model and the data are found
before Hydra writes anything (``harness.preflight``), so a refused run changes no file. In a
multirun a failed job raises ``JobFailed`` instead
of exiting, so the launcher goes on with the other jobs; SIGTERM and SIGINT still stop the
whole run (exit 128 + signal), every finished batch written."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.preflight import one_line
from harness.runner import JobConfig, Terminated, run_job

log = logging.getLogger("harness")


def job_dirname(method: str, overrides: str) -> str:
    """``top_k`` or ``top_k,selector.top_k=5``: readable, and the same for the same job
    (a path in a value, say ``dataset.data_files=a/b.jsonl``, stays one folder)."""
    return ",".join(part for part in (method, overrides) if part).replace("/", "_")


# conf/hydra/launcher/submitit_slurm.yaml keeps the plugin's name on purpose
# (`hydra/launcher=submitit_slurm` gets our one-GPU-per-job preset), so Hydra validates it
# against the plugin's schema of the same name and warns that this is deprecated.
warnings.filterwarnings("ignore", message=r"(?s).*validated against ConfigStore schema")
# A full disk also fails the job's log file (on the same disk): logging would print a traceback
# for every line it could not write there, burying the job's own line (still on the console).
logging.raiseExceptions = False
OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
ConfigStore.instance().store(name="job_schema", node=JobConfig)


CONF = Path(__file__).resolve().parent.parent / "conf"


class JobFailed(CompactHydraException):
    """One job of a multirun failed on its input; its one-line message was logged. Hydra's
    ``run_job`` keeps it in the job's return, so the launcher goes on with the other jobs and
    the sweeper (``hydra/sweeper=harness``) sums the failures up at the end."""


@hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    # absolute, so that hydra.job.chdir=true cannot move the runs into each job's dir
    wandb_dir = Path(to_absolute_path(hydra_cfg.sweep.dir)) if multirun else job_dir
    try:
        path = run_job(cfg, job_dir, wandb_dir=wandb_dir, name=job_dir.name)
    except Terminated as stop:
        log.error("job %s %s: finished batches are written, the lock is released; re-running "
                  "the same command (or SLURM's requeue) resumes.", job_dir, stop)
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:
        log.error("job %s interrupted: records written so far are kept; re-running the same "
                  "command resumes.", job_dir)
        sys.exit(128 + signal.SIGINT)
    except (ValueError, FloatingPointError, OSError, RuntimeError,
            OmegaConfBaseException) as error:
        kept = " Records written before it are kept." if isinstance(
            error, FloatingPointError) else ""
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
            kept = (" Free space (or make the dir writable), then re-run the same command to "
                    "resume; records written before it are kept.")
        message = f"job {job_dir.name}: {one_line(error)}{kept}"
        if multirun:
            log.error("%s", message)
            raise JobFailed(message) from error
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", message)
        sys.exit(1)
    log.info("wrote %s", path)


def check_overrides(args: list[str]) -> None:
    """Hydra's grammar errors do not say which override they are about: say it, in one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in args:
        if not arg.startswith("-"):
            try:
                parser.parse_overrides([arg])
            except OverrideParseException as error:
                raise SystemExit(f"override {arg!r} does not parse: {one_line(error)} (quote a "
                                 "value holding , [ ] = or spaces: key='a,b')") from None


def cli() -> None:
    """``python -m harness``: the overrides' grammar, then Hydra."""
    check_overrides(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
