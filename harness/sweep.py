"""``python -m harness.sweep NAME [override ...]``: run the named sweep ``sweeps/NAME.yaml``.

A sweep is a union of cartesian grids. Each grid becomes one Hydra multirun of
``python -m harness`` (in this process, so the model loads once for the whole sweep with the
default launcher); extra overrides, launcher choices included, apply to every grid. Jobs land
in ``multirun/NAME/<job>``; running the same command again resumes.
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


def load_sweep(name: str) -> list[list[str]]:
    path = Path(name) if name.endswith(".yaml") else SWEEPS / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SWEEPS.glob("*.yaml")))
        raise SystemExit(f"sweep {name!r} not found ({path}); named sweeps: {known}.")
    return [grid_overrides(grid) for grid in yaml.safe_load(path.read_text())["grids"]]


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        raise SystemExit(__doc__)
    name, extra = argv[0], argv[1:]
    from harness.__main__ import main as harness_main

    stem = Path(name).stem
    for number, grid in enumerate(load_sweep(name), 1):
        print(f"[sweep {stem}] grid {number}: {' '.join(grid)}", flush=True)
        sys.argv = ["harness", "--multirun", f"sweep={stem}", *grid, *extra]
        try:
            harness_main()
        except SystemExit as stop:
            if stop.code:
                raise


if __name__ == "__main__":
    main(sys.argv[1:])
