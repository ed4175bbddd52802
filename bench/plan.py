"""``python -m bench.plan SWEEP_DIR [override ...]``: the analysis of an unchanged sweep (warm
caches, W&B off) with its sample-size plan against without it, median of 3, CPU and wall
seconds. Issue 15 asks for at most 1.5x."""

import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import pandas as pd

import analysis.__main__ as entry


def timed(sweep: Path, overrides: list[str]) -> tuple[float, float]:
    cfg = entry.load_config([*overrides, "wandb=disabled"])
    wall, cpu = time.perf_counter(), time.process_time()
    entry.analyse([sweep], cfg)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str]) -> None:
    sweep, overrides = Path(argv[0]), argv[1:]
    timed(sweep, overrides)  # fill every cache
    with_plan = [timed(sweep, overrides) for _ in range(3)]
    with mock.patch.object(entry, "plan_sweep", return_value=(pd.DataFrame(), "")):
        without = [timed(sweep, overrides) for _ in range(3)]
    for label, index in (("wall", 0), ("cpu", 1)):
        a = statistics.median(t[index] for t in with_plan)
        b = statistics.median(t[index] for t in without)
        print(f"unchanged-sweep analysis, {label}: {a:.2f} s with the plan, {b:.2f} s without "
              f"({a / b:.2f}x)", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
