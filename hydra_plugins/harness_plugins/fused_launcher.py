"""``hydra/launcher=fused``: the jobs of a multirun that share model, dataset and generation
settings run as one batched generation (``harness.runner.generate_jobs``), then each job goes
through Hydra's own ``run_job`` as with the basic launcher: its logging, ``.hydra/`` files,
callbacks, ``job.yaml``/``timing.json`` and W&B run stay per job, and a job the fused pass could
not generate (a bad value, a held lock) runs, and fails, on its own with its own message, while
the other jobs go on (``hydra/sweeper=harness`` sums the failures up). Each group generates
under its jobs' ``hydra.job.env_set``, as ``run_job`` would set it."""

import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from omegaconf import DictConfig, open_dict

from hydra_plugins.harness_plugins.sweeper import job_dir_and_config

log = logging.getLogger(__name__)


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.harness_plugins.fused_launcher.FusedLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf,
                             provider="decoding-harness")


def sweep_configs(launcher: BasicLauncher, job_overrides: Sequence[Sequence[str]],
                  initial_job_idx: int) -> list[DictConfig]:
    """What every launch of a fused launcher starts with: Hydra's globals and logging, the sweep
    dir, and each job's full config (numbered as the basic launcher numbers them)."""
    setup_globals()
    assert launcher.config is not None and launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    # That config disables the loggers that exist (the task's module imported the harness's):
    # the fused pass logs through them (the batch size chosen, a group that stops, ...).
    for name, logger in logging.root.manager.loggerDict.items():
        if name.split(".")[0] == "harness" and isinstance(logger, logging.Logger):
            logger.disabled = False
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    configs = []
    for number, overrides in enumerate(job_overrides, initial_job_idx):
        config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config,
                                                                        list(overrides))
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = number
        configs.append(config)
    return configs


class FusedLauncher(BasicLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        configs = sweep_configs(self, job_overrides, initial_job_idx)
        from harness.runner import Terminated, pregenerate  # torch: only once jobs are launched

        jobs = [(*job_dir_and_config(c), dict(c.hydra.job.env_set)) for c in configs]
        try:
            pregenerate(jobs)
        except Terminated as stop:
            log.error("fused generation %s: finished batches are written and every lock is "
                      "released; re-running the same command resumes.", stop)
            sys.exit(128 + stop.signum)
        except KeyboardInterrupt:
            log.error("fused generation interrupted: records written so far are kept; "
                      "re-running the same command resumes.")
            sys.exit(128 + signal.SIGINT)
        log.info("Launching %d jobs locally (generated fused)", len(configs))
        runs = []
        for config in configs:
            runs.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                config=config, job_dir_key="hydra.sweep.dir",
                                job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs


