"""``hydra/sweeper=union hydra.sweeper.sweep_file=sweeps/NAME.yaml``: the union of a named
sweep's cartesian grids as one multirun, so that a launcher sees every job at once (the fused
launcher then generates all jobs that share settings as one batched generation). Each grid
expands exactly as the basic sweeper expands its overrides; command-line overrides apply to
every grid."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

from hydra_plugins.harness_plugins.sweeper import HarnessSweeper, MultirunError

log = logging.getLogger(__name__)


@dataclass
class UnionSweeperConf:
    _target_: str = "hydra_plugins.harness_plugins.union_sweeper.UnionSweeper"
    sweep_file: str = "???"  # sweeps/NAME.yaml (or NAME): `grids:`, a list of {key: value(s)}
    max_batch_size: int | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="union", node=UnionSweeperConf,
                             provider="decoding-harness")


class UnionSweeper(HarnessSweeper):
    """Failed jobs and shared dirs are handled as ``HarnessSweeper`` does."""

    def __init__(self, sweep_file: str, max_batch_size: int | None = None) -> None:
        from harness.sweep import SweepFileError, load_sweep, sweep_path  # torch-free

        super().__init__(max_batch_size=max_batch_size)
        try:
            self.path, self.grids = sweep_path(sweep_file), load_sweep(sweep_file)
        except SweepFileError as error:
            raise MultirunError(str(error)) from None
        self.grid_of: dict[tuple[str, ...], int] = {}  # a job's overrides -> its grid's number

    def split_arguments(self, overrides: list[Override],
                        max_batch_size: int | None) -> list[list[list[str]]]:
        """Every grid's jobs, with the command line's overrides applied to each grid."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = []
        for number, grid in enumerate(self.grids, 1):
            try:
                parsed = parser.parse_overrides(grid)
            except HydraException as error:
                raise MultirunError(f"sweep file {self.path}, grid {number}: "
                                    f"{str(error).splitlines()[0]}") from error
            grid_jobs = BasicSweeper.split_arguments([*parsed, *overrides], None)[0]
            for job in grid_jobs:
                self.grid_of.setdefault(tuple(job), number)
            jobs += grid_jobs
        log.info("%d grids, %d jobs", len(self.grids), len(jobs))
        return list(self.split_overrides_to_chunks(jobs, max_batch_size))

    def where(self, job: Sequence[str]) -> str:
        return f"sweep file {self.path}, grid {self.grid_of.get(tuple(job), '?')}: "
