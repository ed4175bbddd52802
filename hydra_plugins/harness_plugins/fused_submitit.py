"""``hydra/launcher=fused_slurm`` and ``hydra/launcher=fused_submitit_local``: the fused
launcher's groups (jobs that share model, dataset and generation settings), each split into
``hydra.launcher.shards`` shards of its prompts, run as one submitit task per (group, shard):
on SLURM one job array, each task generating all its group's jobs fused on its shard.

The SLURM and local parameters are hydra-submitit-launcher's own (``SlurmQueueConf``,
``LocalQueueConf``: partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min,
array_parallelism, additional_parameters, ...), plus ``shards``.

- Tasks write into shard dirs of their jobs (``harness.shards``: no shared lock or file).
  Once every task of a group is done, this process merges each job's shards into its job dir
  and runs Hydra's ``run_job`` for it, which only tracks it (``.hydra/``, log, W&B run): each
  job dir ends up as if the job ran alone, and no model is loaded here.
- Re-running the same command submits only the (group, shard) tasks that are not complete.
- Preemption and time limits: SLURM's pre-timeout signal (USR2, ``signal_delay_s`` before the
  limit) makes submitit checkpoint the task (``Checkpointable``: the records on disk are the
  checkpoint) and requeue it; it stops mid-batch, its finished batches are written and its
  locks released, and the requeued task resumes its shard. SIGTERM (cancel, preemption) stops
  generation at the next step and the task exits without a result, as submitit expects: a
  preemption that SLURM requeues resumes, a cancelled task is resubmitted by re-running.
- A failed task is reported with its own error, its log and the command that resumes it; the
  other tasks' records are kept, and every other group is merged and tracked.
"""

import logging
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job
from hydra_plugins.hydra_submitit_launcher.config import (
    BaseQueueConf,
    LocalQueueConf,
    SlurmQueueConf,
)
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.harness_plugins.fused_launcher import job_dir_and_config, sweep_configs

log = logging.getLogger(__name__)
HERE = "hydra_plugins.harness_plugins.fused_submitit"


@dataclass
class FusedSlurmConf(SlurmQueueConf):
    """hydra-submitit-launcher's SLURM schema with this project's defaults (one GPU, 8 CPUs,
    32 GB and 4 h per task; requeued up to 3 times after a time limit) and ``shards``."""

    _target_: str = f"{HERE}.FusedSlurmLauncher"
    shards: int = 1  # tasks per group: each gets every shards-th prompt
    timeout_min: int = 240
    cpus_per_task: int | None = 8
    gpus_per_node: int | None = 1
    mem_gb: int | None = 32
    max_num_timeout: int = 3


@dataclass
class FusedLocalConf(LocalQueueConf):
    _target_: str = f"{HERE}.FusedLocalLauncher"
    shards: int = 1


ConfigStore.instance().store(group="hydra/launcher", name="fused_slurm", node=FusedSlurmConf,
                             provider="decoding-harness")
ConfigStore.instance().store(group="hydra/launcher", name="fused_submitit_local",
                             node=FusedLocalConf, provider="decoding-harness")


class TaskFailed(RuntimeError):
    """A (group, shard) task ended without its records; the message says why and what to do."""


class ShardTask:
    """One submitit task: shard ``shard`` of ``shards`` of a group of jobs (config, job dir).
    Checkpointable: on USR2 submitit pickles it again and requeues it; it then resumes from
    the records on disk."""

    def __init__(self, specs: list[tuple[DictConfig, Path]], shard: int, shards: int) -> None:
        self.specs, self.shard, self.shards = specs, shard, shards

    def __str__(self) -> str:
        first = self.specs[0][1].name
        group = first if len(self.specs) == 1 else f"{len(self.specs)} jobs ({first}, ...)"
        return f"shard {self.shard} of {self.shards} of {group}"

    def __call__(self) -> dict[str, dict]:
        import submitit  # in the task only
        import torch

        from harness.runner import Terminated
        from harness.shards import generate_shard

        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
        if os.environ.get("SLURM_CPUS_PER_TASK"):  # not one thread per core of the whole node
            torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
        environment = submitit.JobEnvironment()
        log.info("%s: task %s on %s", self, environment.job_id, environment.hostname)
        try:
            timings = generate_shard(self.specs, self.shard, self.shards)
        except Terminated as stop:
            log.error("%s %s: finished batches are written, locks released; a requeue (or "
                      "re-running the command) resumes it.", self, stop)
            raise SystemExit(128 + stop.signum) from None  # no result: submitit keeps waiting
        task = {"task": environment.job_id, "host": environment.hostname, "shard": self.shard}
        return {job_dir: {**task, **figures} for job_dir, figures in timings.items()}

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


class FusedSubmititLauncher(BaseSubmititLauncher):
    def __init__(self, shards: int = 1, **params: Any) -> None:
        if shards < 1:
            raise ValueError(f"hydra.launcher.shards={shards} must be >= 1 (tasks per group of "
                             "jobs that share settings).")
        super().__init__(**params)
        self.shards = shards

    def executor(self) -> Any:
        """The submitit executor, configured as hydra-submitit-launcher configures it."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        timeouts = ({f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]}
                    if "max_num_timeout" in self.params else {})  # SLURM only
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR,
                                         folder=self.params["submitit_folder"], **timeouts)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        configs = sweep_configs(self, job_overrides, initial_job_idx)
        from harness import runner  # torch: only once jobs are launched
        from harness.shards import merge, shard_is_complete

        groups: dict[str, list[tuple[DictConfig, Path]]] = {}
        for config in configs:
            job_dir, cfg = job_dir_and_config(config)
            try:
                runner.validate(cfg)
            except runner.JobError:
                continue  # its own run_job reports it
            groups.setdefault(runner.shared_settings(cfg), []).append((cfg, job_dir))
        tasks = [ShardTask(specs, shard, self.shards) for specs in groups.values()
                 for shard in range(self.shards)
                 if not all(shard_is_complete(cfg, d, shard, self.shards) for cfg, d in specs)]
        log.info("%d jobs in %d groups x %d shards: %d tasks to run, %d complete", len(configs),
                 len(groups), self.shards, len(tasks), len(groups) * self.shards - len(tasks))
        timings, failed = self.run(tasks)
        for specs in groups.values():
            if not any(job_dir in failed for _, job_dir in specs):
                for cfg, job_dir in specs:
                    runner.PREGENERATED[job_dir.resolve()] = merge(
                        cfg, job_dir, self.shards, timings.get(str(job_dir), []))
        dirs = [job_dir_and_config(config)[0] for config in configs]
        runs: dict[int, JobReturn] = {}
        # merged jobs first: a job with a bad value then fails on its own, after them
        for index in sorted(range(len(configs)),
                            key=lambda i: dirs[i].resolve() not in runner.PREGENERATED):
            config, job_dir = configs[index], dirs[index]
            if job_dir in failed:
                runs[index] = JobReturn(overrides=list(config.hydra.overrides.task), cfg=config,
                                        hydra_cfg=config, working_dir=str(job_dir),
                                        status=JobStatus.FAILED,
                                        _return_value=TaskFailed(failed[job_dir]))
                continue
            runs[index] = run_job(hydra_context=self.hydra_context,
                                  task_function=self.task_function, config=config,
                                  job_dir_key="hydra.sweep.dir",
                                  job_subdir_key="hydra.sweep.subdir")
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [runs[i] for i in range(len(configs))]

    def run(self, tasks: list[ShardTask]) -> tuple[dict[str, list[dict]], dict[Path, str]]:
        """Submit ``tasks`` (on SLURM: one job array) and wait for all of them. Returns each
        job dir's task timings, and for the job dirs of failed tasks what went wrong."""
        from submitit.core.utils import FailedJobError

        timings: dict[str, list[dict]] = {}
        failed: dict[Path, str] = {}
        if not tasks:
            return timings, failed
        executor = self.executor()
        with executor.batch():
            jobs = [executor.submit(task) for task in tasks]
        for job, task in zip(jobs, tasks, strict=True):
            log.info("task %s: %s", job.job_id, task)
        resume = shlex.join(getattr(sys, "orig_argv", sys.argv))
        for job, task in zip(jobs, tasks, strict=True):
            try:
                for job_dir, figures in job.result().items():
                    timings.setdefault(job_dir, []).append(figures)
            except Exception as error:  # submitit's FailedJobError or UncompletedJobError
                if isinstance(error, FailedJobError):  # the last line of the task's traceback
                    parts = str(error).split("-" * 22)  # (between submitit's rulers)
                    reason = (parts[1] if len(parts) > 2 else str(error)).strip().splitlines()[-1]
                else:  # UncompletedJobError: killed, cancelled, timed out
                    reason = f"it ended without a result (state {job.state})"
                message = (f"task {job.job_id} ({task}) failed: {reason}\n"
                           f"  its log: {job.paths.stderr}\n  the other tasks' "
                           "records are kept; re-run the same command to resume it:\n  "
                           f"{resume}")
                log.error(message)
                for _, job_dir in task.specs:
                    failed[job_dir] = "\n".join(filter(None, (failed.get(job_dir), message)))
        return timings, failed


class FusedSlurmLauncher(FusedSubmititLauncher):
    _EXECUTOR = "slurm"


class FusedLocalLauncher(FusedSubmititLauncher):
    _EXECUTOR = "local"
