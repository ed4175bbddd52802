"""``hydra/launcher=fused_slurm`` and ``hydra/launcher=fused_submitit_local``: the fused
launcher's groups (jobs that share model, dataset and generation settings), each split into
``hydra.launcher.shards`` shards of its prompts, run as one submitit task per (group, shard):
on SLURM one job array, each task generating all its group's jobs fused on its shard.

The SLURM and local parameters are hydra-submitit-launcher's own (``SlurmQueueConf``,
``LocalQueueConf``: partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min,
array_parallelism, additional_parameters, ...), plus ``shards``.

- Before anything is submitted, every job dir (and its shard dirs) is checked for records of
  another config, from the files alone: such a job is left out of its group with its own
  failure line, and the other jobs run.
- Tasks write into shard dirs of their jobs (``harness.shards``: no shared lock or file).
  Once every task of a group is done, this process merges each job's shards into its job dir
  and runs Hydra's ``run_job`` for it, which only tracks it (``.hydra/``, log, W&B run): each
  job dir ends up as if the job ran alone, and no model is loaded here. A job whose shards
  cannot be merged now (a dir locked by another process) is reported on its own line and left
  for the next run; the others are merged and tracked.
- Re-running the same command adopts what is still running: the tasks of earlier launches
  (their pickles in the submitit folder) that squeue lists as pending or running on these job
  dirs are waited for, not submitted again; then only the (group, shard) tasks that are
  neither complete nor alive are submitted. Ctrl-C or SIGTERM on this process stops only the
  waiting: one line says that the tasks run on, that re-running re-attaches, and the
  ``scancel`` command that would cancel them.
- Preemption and time limits: SLURM's pre-timeout signal (USR2, ``signal_delay_s`` before the
  limit) makes submitit checkpoint the task (``Checkpointable``: the records on disk are the
  checkpoint) and requeue it; it stops mid-batch, its finished batches are written (and
  timed) and its locks released, and the requeued task resumes its shard. SIGTERM (cancel,
  preemption) stops generation at the next step and the task exits without a result, as
  submitit expects: a preemption that SLURM requeues resumes, a cancelled task is resubmitted
  by re-running.
- Errors are one line each: sbatch's refusal is SLURM's own message and the key to change; a
  failed task is reported once with its own error and log, and "re-run to resume" only where a
  re-run can help (not for an input error such as more new tokens than the model's context);
  the other tasks' records are kept, and every other group is merged and tracked.
"""

import logging
import os
import shlex
import signal
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

from harness.preflight import one_line
from hydra_plugins.harness_plugins.fused_launcher import job_dir_and_config, sweep_configs
from hydra_plugins.harness_plugins.sweeper import MultirunError

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
    """A job of a (group, shard) task that ended without its records, or a job left out or
    not merged; the message (``job <name>: ...``) says why and what to do."""


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

    def __call__(self) -> None:
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
            generate_shard(self.specs, self.shard, self.shards, labels={
                "task": environment.job_id, "host": environment.hostname, "shard": self.shard})
        except Terminated as stop:
            log.error("%s %s: finished batches are written, locks released; a requeue (or "
                      "re-running the command) resumes it.", self, stop)
            raise SystemExit(128 + stop.signum) from None  # no result: submitit keeps waiting

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


# What to change when sbatch refuses the array, by a word of SLURM's message.
SBATCH_KEYS = {"gres": "hydra.launcher.gpus_per_node (or gres)",
               "partition": "hydra.launcher.partition", "memory": "hydra.launcher.mem_gb",
               "time limit": "hydra.launcher.timeout_min", "account": "hydra.launcher.account",
               "qos": "hydra.launcher.qos", "cpu": "hydra.launcher.cpus_per_task",
               "node": "hydra.launcher.nodes"}


def submission_error(error: Exception) -> str:
    """sbatch's (or submitit's) refusal in one line: SLURM's own message and the key to
    change."""
    text = str(error)
    ours = [line.strip() for line in text.splitlines() if "error:" in line]
    message = ours[-1] if ours else (text.strip().splitlines() or [type(error).__name__])[-1]
    keys = [key for word, key in SBATCH_KEYS.items() if word in message.lower()]
    return (f"SLURM refused the job array: {message.strip()}; change "
            f"{keys[0] if keys else 'the hydra.launcher.* setting it names'} and re-run.")


def task_error(error: Exception, job: Any) -> tuple[str, bool]:
    """A failed task's reason in one line (the last line of its traceback, without the
    exception's module), and whether re-running can help: an input error (``JobError``,
    ``ValueError``) says itself what to change; a cancel, a time limit, a node failure or a
    device error is resumed by a re-run."""
    from submitit.core.utils import FailedJobError

    if not isinstance(error, FailedJobError):  # UncompletedJobError: killed, cancelled, timed out
        return f"it ended without a result (state {job.state})", True
    parts = str(error).split("-" * 22)  # the task's traceback, between submitit's rulers
    last = (parts[1] if len(parts) > 2 else str(error)).strip().splitlines()[-1]
    kind, _, message = last.partition(": ")
    name = kind.rsplit(".", 1)[-1]
    if message and name.isidentifier():
        return message, name not in ("JobError", "ValueError", "NotMergeable")
    return last, True


def failure(job_dir: Path, message: str) -> str:
    return f"job {job_dir.name}: {message}"


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
        from harness.shards import check_job_dir, merge, shard_is_complete

        groups: dict[str, list[tuple[DictConfig, Path]]] = {}
        failed: dict[Path, str] = {}
        for config in configs:
            job_dir, cfg = job_dir_and_config(config)
            try:
                runner.validate(cfg)
            except runner.JobError:
                continue  # its own run_job reports it
            try:  # records of another config: refused here, not by a task that loaded a model
                check_job_dir(cfg, job_dir)
            except runner.JobError as error:
                failed[job_dir] = failure(job_dir, f"{one_line(error)} (left out of its group; "
                                          "the other jobs run)")
                log.error("%s", failed[job_dir])
                continue
            groups.setdefault(runner.shared_settings(cfg), []).append((cfg, job_dir))

        def to_run() -> list[ShardTask]:
            return [ShardTask(specs, shard, self.shards) for specs in groups.values()
                    for shard in range(self.shards)
                    if not all(shard_is_complete(c, d, shard, self.shards) for c, d in specs)]

        dirs = {job_dir for specs in groups.values() for _, job_dir in specs}
        adopted = self.alive_tasks(dirs)
        tasks = to_run()
        log.info("%d jobs in %d groups x %d shards: %d tasks to run, %d complete%s",
                 len(configs), len(groups), self.shards, len(tasks),
                 len(groups) * self.shards - len(tasks),
                 f", {len(adopted)} still running from an earlier launch" if adopted else "")
        if adopted:
            self.wait(adopted, resubmitted=False)
            tasks = to_run()  # what the earlier tasks did not finish
            log.info("earlier tasks ended: %d tasks to run", len(tasks))
        failed.update(self.run(tasks))
        for specs in groups.values():
            if any(job_dir in failed for _, job_dir in specs):
                continue
            for cfg, job_dir in specs:
                try:
                    runner.PREGENERATED[job_dir.resolve()] = merge(cfg, job_dir, self.shards)
                except (runner.JobError, OSError) as error:  # a held lock, a full disk
                    failed[job_dir] = failure(job_dir, f"not merged now: {one_line(error)} "
                                              "Its shards are kept; re-running the same command "
                                              "merges it.")
                    log.error("%s", failed[job_dir])
        job_dirs = [job_dir_and_config(config)[0] for config in configs]
        runs: dict[int, JobReturn] = {}
        # merged jobs first: a job with a bad value then fails on its own, after them
        for index in sorted(range(len(configs)),
                            key=lambda i: job_dirs[i].resolve() not in runner.PREGENERATED):
            config, job_dir = configs[index], job_dirs[index]
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

    def alive_tasks(self, job_dirs: set[Path]) -> list[tuple[Any, ShardTask]]:
        """Tasks of earlier launches that are still pending or running on any of
        ``job_dirs`` (only SLURM's outlive their launcher)."""
        return []

    def run(self, tasks: list[ShardTask]) -> dict[Path, str]:
        """Submit ``tasks`` (on SLURM: one job array) and wait for all of them. Returns, for
        the job dirs of failed tasks, what went wrong."""
        if not tasks:
            return {}
        executor = self.executor()
        try:
            with executor.batch():
                jobs = [executor.submit(task) for task in tasks]
        except Exception as error:  # sbatch refused: one line, no traceback
            raise MultirunError(submission_error(error)) from error
        for job, task in zip(jobs, tasks, strict=True):
            log.info("task %s: %s", job.job_id, task)
        return self.wait(list(zip(jobs, tasks, strict=True)), resubmitted=True)

    def wait(self, pairs: list[tuple[Any, ShardTask]], resubmitted: bool) -> dict[Path, str]:
        """Wait for each (submitit job, task); returns the failures by job dir, each task's
        error logged once. Ctrl-C or SIGTERM here stops only the waiting: the tasks run on,
        and re-running the same command re-attaches to them. ``resubmitted``: tasks of this
        launch (an earlier launch's that failed are resubmitted by the caller instead)."""
        failed: dict[Path, str] = {}
        resume = shlex.join(getattr(sys, "orig_argv", sys.argv))
        previous = signal.signal(signal.SIGTERM, interrupt) if is_main_thread() else None
        try:
            for job, task in pairs:
                try:
                    job.result()
                except Exception as error:  # submitit's FailedJobError or UncompletedJobError
                    reason, retry = task_error(error, job)
                    if not resubmitted:
                        log.warning("earlier task %s (%s) ended without its records: %s",
                                    job.job_id, task, reason)
                        continue
                    advice = (f"; re-run the same command to resume it: {resume}" if retry
                              else "; the other tasks' records are kept")
                    message = f"task {job.job_id} ({task}) failed: {reason} (its log: " \
                              f"{job.paths.stderr}){advice}"
                    log.error("%s", message)
                    for _, job_dir in task.specs:
                        failed[job_dir] = failure(job_dir, message)
        except KeyboardInterrupt as stop:
            ids = sorted({str(job.job_id) for job, _ in pairs})
            arrays = sorted({i.split("_")[0] for i in ids})
            log.error("launcher stopped; tasks %s keep running on the cluster: re-running the "
                      "same command re-attaches to them (and merges), or cancel them with "
                      "`scancel %s`.", ", ".join(ids), " ".join(arrays))
            sys.exit(128 + getattr(stop, "signum", signal.SIGINT))
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return failed


class Stopped(KeyboardInterrupt):
    """SIGTERM while the launcher waits: handled as Ctrl-C is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def interrupt(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# squeue states of a task that will still write (the others have ended)
ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
         "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}


class FusedSlurmLauncher(FusedSubmititLauncher):
    _EXECUTOR = "slurm"

    def alive_tasks(self, job_dirs: set[Path]) -> list[tuple[Any, ShardTask]]:
        """Read the earlier launches' tasks from the submitit folder (``<id>_submitted.pkl``)
        and keep those that squeue lists as alive and that write one of ``job_dirs``: they
        are waited for (re-attached) instead of submitted twice."""
        import getpass
        import subprocess

        import submitit
        from submitit.core.utils import DelayedSubmission

        folder = Path(str(self.params["submitit_folder"]))
        base = folder.parent if "%j" in folder.name else folder
        submitted = {p.name[: -len("_submitted.pkl")]: p
                     for p in base.glob("*/*_submitted.pkl")}
        if not submitted:
            return []
        try:
            queue = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o",
                                    "%i %T"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as error:
            log.warning("squeue failed (%s): tasks of earlier launches cannot be re-attached; "
                        "any still running stop this launch's tasks on their locks.", error)
            return []
        states = dict(line.split() for line in queue.splitlines() if len(line.split()) == 2)
        alive = []
        for job_id, path in sorted(submitted.items()):
            if states.get(job_id) not in ALIVE:
                continue
            try:
                task = DelayedSubmission.load(path).function
            except Exception as error:  # another version's pickle: not ours to adopt
                log.warning("cannot read %s (%s): not re-attached", path, error)
                continue
            if isinstance(task, ShardTask) and {d for _, d in task.specs} & job_dirs:
                log.info("task %s (%s) of an earlier launch is %s: re-attached, not submitted "
                         "again", job_id, task, states[job_id])
                alive.append((submitit.SlurmJob(folder=folder, job_id=job_id), task))
        return alive


class FusedLocalLauncher(FusedSubmititLauncher):
    _EXECUTOR = "local"
