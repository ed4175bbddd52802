"""``hydra/sweeper=harness`` (the default of ``python -m harness -m``): Hydra's basic sweeper,
plus two things a multirun of the harness needs.

- Before any job runs, every job is checked (``harness.preflight``): one that would be refused
  is not launched, so nothing is written for it, and a multirun whose every job is refused
  writes nothing at all (not even ``multirun.yaml``).
- Before any job runs, two jobs that would write one job dir are refused. They differ only in
  keys that do not name a dir (``dataset.limit``, ``generation.seeds``,
  ``generation.batch_size``, ...), so they would write one set of records, one ``job.yaml`` and
  one W&B run under two configs. Merging them would run a config that nobody typed; one job
  with the union (the larger limit, all seeds) extends the same dir, so the error says that.
- A failing job does not stop the others: every job runs, each failure is logged with its own
  line by the job, and the multirun ends with one line summing them up (exit 1).
"""

import difflib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_loader import ConfigLoader
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException, HydraException
from omegaconf import DictConfig, OmegaConf

from harness.preflight import ENDED, check_job, job_dir_and_config, one_line

log = logging.getLogger(__name__)


class MultirunError(CompactHydraException):
    """One line for the user; Hydra prints it without a traceback (unless HYDRA_FULL_ERROR)."""


@dataclass
class HarnessSweeperConf:
    _target_: str = "hydra_plugins.harness_plugins.sweeper.HarnessSweeper"
    max_batch_size: int | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="harness", node=HarnessSweeperConf,
                             provider="decoding-harness")


def failure_summary(failures: Sequence[str], jobs: int) -> str | None:
    """``3 of 11 jobs failed: jobs a, b: why; job c: other why. Re-run ...``, or None: each
    distinct reason once, with the jobs it hit (a failed cluster task fails all its jobs with
    one message)."""
    if not failures:
        return None
    hit: dict[str, list[str]] = {}
    for failure in failures:
        named = re.match(r"job (.+?): (.*)", failure.rstrip("."))
        reason, job = (named[2], named[1]) if named else (failure.rstrip("."), "")
        hit.setdefault(reason, []).append(job)
    reasons = "; ".join(f"{hit_jobs(names)}: {reason}" if any(names) else reason
                        for reason, names in hit.items())
    return (f"{len(failures)} of {jobs} jobs failed: {reasons}. Re-run the same command "
            "to retry them once their input is fixed (finished jobs are skipped).")


def hit_jobs(names: list[str], shown: int = 3) -> str:
    names = [name for name in names if name]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"job{'s' if len(names) > 1 else ''} {', '.join(names[:shown])}{more}"


def failures_of(returns: Sequence[JobReturn]) -> list[str]:
    return [one_line(r._return_value) for r in returns if r.status == JobStatus.FAILED]


def unknown_override(loader: ConfigLoader, config: DictConfig, job: Sequence[str]) -> str | None:
    """``key 'selectr' is not known; did you mean 'selector'?`` (or an option of a group, or a
    key of the group's chosen config: ``selector.topk`` -> ``selector.top_k``), else None."""
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(list(job))
    choices = []
    for override in overrides:
        group = override.key_or_group
        if override.is_delete() or override.is_add() or override.is_force_add():
            continue
        parent, _, name = group.rpartition("/")
        if name in loader.list_groups(parent):
            options = loader.get_group_options(group)
            value = str(override.value())
            if value not in options:
                return (f"{group}={value} is not an option of {group}{close(value, options)} "
                        f"(options: {', '.join(options)}).")
            choices.append(override.input_line)
    try:
        tree = OmegaConf.to_container(loader.load_sweep_config(config, choices), resolve=False)
    except HydraException:
        return None
    for override in overrides:
        key = override.key_or_group
        if override.is_add() or override.is_force_add() or key in loader.list_groups(""):
            continue
        node, path = tree, []
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                known = [*node] if isinstance(node, dict) else []
                if not path:
                    known += loader.list_groups("")
                prefix = ".".join(path) + "." if path else ""
                return f"key {key!r} is not known{close(part, known, prefix) or '.'}"
            node, path = node[part], [*path, part]
    return None


def close(word: str, known: Sequence[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean '{prefix}{match[0]}'?" if match else ""


class HarnessSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        """BasicSweeper.sweep, except that every job is checked before any runs (a job that
        would be refused is not launched, so nothing is written for it: its line now, the
        summary at the end), shared dirs are refused, and failed jobs are summed up at the end
        instead of raising the first."""
        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        ENDED.clear()  # an earlier multirun of this process (tests) is not this one
        params = [*self._parse_config(), *arguments]
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params),
                                              self.max_batch_size)
        batches = list(self.overrides)
        jobs = [tuple(job) for batch in batches for job in batch]
        configs = {job: self.job_config(job) for job in jobs}  # validate_batch_is_legal's work
        self.refuse_shared_dirs(configs)
        here = "submitit" not in str(self.config.hydra.launcher.get("_target_", ""))
        refused = {job: problem for job, config in configs.items()
                   if (problem := check_job(config, multirun=True, here=here))}
        batches = [kept for batch in batches
                   if (kept := [job for job in batch if tuple(job) not in refused])]
        if not batches:
            raise MultirunError(f"{failure_summary(list(refused.values()), len(jobs))} Nothing "
                                "was run or written.")
        for problem in refused.values():  # now, not only after hours of the other jobs
            log.error("%s", problem)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, done = [], 0
        for batch in batches:
            returns.append(self.launch(batch, done, configs))
            done += len(batch)
        summary = failure_summary(
            [*refused.values(), *failures_of([r for batch in returns for r in batch])], len(jobs))
        if summary:
            raise MultirunError(summary)
        return returns

    def launch(self, batch: Sequence[Sequence[str]], first: int,
               configs: dict[tuple[str, ...], DictConfig]) -> list[JobReturn]:
        """The launcher's returns; if it stops on an OSError (a full disk fails Hydra's own
        ``.hydra/`` writes, outside the job), the jobs it had not finished are launched one by
        one, and one that fails so is a failed job with its own line."""
        try:
            return list(self.launcher.launch(batch, initial_job_idx=first))
        except OSError as error:
            if len(batch) > 1:  # the jobs it finished left their returns in ENDED
                return [ENDED.get(tuple(job)) or self.launch([job], number, configs)[0]
                        for number, job in enumerate(batch, first)]
            job_dir = job_dir_and_config(configs[tuple(batch[0])])[0]
            message = (f"job {job_dir.name}: {one_line(error)}; free space (or make the dir "
                       "writable), then re-run the same command to resume.")
            log.error("%s", message)
            return [JobReturn(overrides=list(batch[0]), status=JobStatus.FAILED,
                              _return_value=MultirunError(message))]

    def job_config(self, job: Sequence[str]) -> DictConfig:
        """The job's full config, as the launcher will compose it; an override that names no
        key or option is one line with the closest that does."""
        assert self.config is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        try:
            return loader.load_sweep_config(self.config, list(job))
        except HydraException as error:
            why = unknown_override(loader, self.config, job) or str(error).splitlines()[0]
            raise MultirunError(self.where(job) + why) from error

    def where(self, job: Sequence[str]) -> str:
        """Where the job's overrides come from, for a message about them."""
        return f"overrides {' '.join(job)}: "

    def refuse_shared_dirs(self, configs: dict[tuple[str, ...], DictConfig]) -> None:
        by_dir: dict[Path, list[Sequence[str]]] = {}
        for overrides, config in configs.items():
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
