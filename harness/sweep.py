"""``python -m harness.sweep NAME [override ...]``: run the named sweep ``sweeps/NAME.yaml``.

A sweep is a union of cartesian grids. All of them run as one Hydra multirun of
``python -m harness`` through the union sweeper (``hydra/sweeper=union``), and by default the
fused launcher (``hydra/launcher=fused``) generates every job that shares model, dataset and
generation settings as one batched generation. Extra overrides apply to every grid; a launcher
choice replaces the fused one (``hydra/launcher=basic``: one job at a time, as before;
``joblib``, ``submitit_slurm``: as usual). Jobs land in ``multirun/NAME/<job>``; running the
same command again resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def grid_overrides(grid: dict) -> list[str]:
    """``{"selector.alpha": [0.2, 0.5]}`` -> ``["selector.alpha=0.2,0.5"]``."""
    def text(value: object) -> str:
        return "null" if value is None else str(value)

    return [f"{key}={','.join(map(text, v)) if isinstance(v, list) else text(v)}"
            for key, v in grid.items()]


class SweepFileError(ValueError):
    """A sweep name or file that cannot be used; the message names the file and the fix."""


EXAMPLE = "e.g. grids: [{selector: top_k, selector.top_k: [5, 10]}]"


def sweep_path(name: str) -> Path:
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SWEEPS.glob("*.yaml")))
        raise SweepFileError(f"sweep {name!r} not found ({path}); named sweeps: {known}.")
    return path


def load_sweep(name: str) -> list[list[str]]:
    """The sweep's grids as override lists; every mistake in the file names the file."""
    path = sweep_path(name)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise SweepFileError(f"sweep file {path} is not valid YAML{line} "
                             f"({getattr(error, 'problem', None) or error}); {EXAMPLE}.") from None
    if not isinstance(content, dict) or "grids" not in content:
        raise SweepFileError(f"sweep file {path} has no `grids:` key; {EXAMPLE}.")
    grids = content["grids"]
    if not isinstance(grids, list) or not grids or not all(
            isinstance(g, dict) and g for g in grids):
        raise SweepFileError(f"sweep file {path}: `grids:` must be a non-empty list of mappings "
                             f"(override: value or [values]); {EXAMPLE}.")
    for number, grid in enumerate(grids, 1):
        for key, value in grid.items():
            values = value if isinstance(value, list) else [value]
            if not isinstance(key, str) or not values or any(
                    isinstance(v, (dict, list)) for v in values):
                raise SweepFileError(f"sweep file {path}, grid {number}: {key!r}: {value!r} must "
                                     f"be a value or a non-empty list of values; {EXAMPLE}.")
    return [grid_overrides(grid) for grid in grids]


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        raise SystemExit(__doc__)
    name, extra = argv[0], argv[1:]
    try:
        path, grids = sweep_path(name), load_sweep(name)
    except SweepFileError as error:
        raise SystemExit(str(error)) from None
    launcher = [] if any(a.startswith("hydra/launcher=") for a in extra) else [
        "hydra/launcher=fused"]
    print(f"[sweep {path.stem}] {len(grids)} grids from {path}", flush=True)
    from harness.__main__ import cli as harness_main  # torch: only once the file is good

    sys.argv = ["harness", "--multirun", f"sweep={path.stem}", "hydra/sweeper=union",
                f"hydra.sweeper.sweep_file={path}", *launcher, *extra]
    try:
        harness_main()
    except SystemExit as stop:
        if stop.code:
            raise


if __name__ == "__main__":
    main(sys.argv[1:])
