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


def sweep_path(name: str) -> Path:
    path = Path(name) if name.endswith(".yaml") else SWEEPS / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SWEEPS.glob("*.yaml")))
        raise SystemExit(f"sweep {name!r} not found ({path}); named sweeps: {known}.")
    return path


def load_sweep(name: str) -> list[list[str]]:
    return [grid_overrides(grid) for grid in yaml.safe_load(sweep_path(name).read_text())["grids"]]


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        raise SystemExit(__doc__)
    name, extra = argv[0], argv[1:]
    from harness.__main__ import main as harness_main

    path = sweep_path(name)
    launcher = [] if any(a.startswith("hydra/launcher=") for a in extra) else [
        "hydra/launcher=fused"]
    print(f"[sweep {path.stem}] {len(load_sweep(name))} grids from {path}", flush=True)
    sys.argv = ["harness", "--multirun", f"sweep={path.stem}", "hydra/sweeper=union",
                f"hydra.sweeper.sweep_file={path}", *launcher, *extra]
    try:
        harness_main()
    except SystemExit as stop:
        if stop.code:
            raise


if __name__ == "__main__":
    main(sys.argv[1:])
