"""Fused vs one-job-at-a-time sweeps: ``sweeps/seed_comparison`` at demo size (or any size), at
the same ``generation.batch_size`` both ways, the share of records identical between the two,
and optionally the same fused sweep run by an older checkout of the harness (``--before DIR``,
e.g. ``git archive`` of an earlier commit) for the change over what the demo did before.

Runs are interleaved (this machine's speed drifts); each is reported as min / median / max
over ``--repeats``, and each ratio as the median of the per-repeat ratios with their range.

python -m bench.fusion [--smoke] [--model smollm2] [--limit 24] [--new 48] [--batch 88]
                       [--before DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.selectors import machine

ROOT = Path(__file__).resolve().parent.parent


def sweep(code: Path, out: Path, overrides: list[str]) -> float:
    """Wall time of ``python -m harness.sweep seed_comparison`` run by the checkout ``code``."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.sweep", "seed_comparison", *overrides,
                    f"hydra.sweep.dir={out}"], cwd=code, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                       [str(code), os.environ.get("PYTHONPATH", "")])})
    return time.perf_counter() - start


def texts(sweep_dir: Path) -> dict[tuple, str]:
    out = {}
    for path in sweep_dir.glob("*/generations.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            out[path.parent.name, record["prompt_id"], record["seed"]] = record["continuation"]
    return out


def tokens(sweep_dir: Path) -> int:
    return sum(json.loads(line)["num_tokens"] for path in sweep_dir.glob("*/generations.jsonl")
               for line in path.read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny model, seconds")
    parser.add_argument("--model", default=None)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--new", type=int, default=48)
    parser.add_argument("--batch", type=int, default=88,
                        help="generation.batch_size, rows per forward, fused and not")
    parser.add_argument("--before", type=Path, default=None,
                        help="an older checkout: its own fused sweep, for comparison")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = args.model or ("tiny" if args.smoke else "smollm2")
    dataset = args.dataset or ("tiny" if model == "tiny" else "austen")
    size = [f"model={model}", f"dataset={dataset}", f"dataset.limit={args.limit}",
            f"generation.max_new_tokens={args.new}", "generation.seeds=[0]", "wandb=disabled"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"seed_comparison (11 jobs) on {machine(device)}: {' '.join(size)}")
    batch = f"generation.batch_size={args.batch}"
    runs = {"fused": (ROOT, [batch]),
            "one job at a time": (ROOT, ["hydra/launcher=basic", batch])}
    if args.before:
        runs["before (fused, older checkout)"] = (args.before.resolve(), [batch])
    seconds: dict[str, list[float]] = {label: [] for label in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved: this machine's speed drifts
            for number, (label, (code, extra)) in enumerate(runs.items()):
                out = Path(tmp, f"{repeat}-{number}")
                took = sweep(code, out, [*size, *extra])
                seconds[label].append(took)
                print(f"{label:32s} {' '.join(extra):50s} {took:7.1f} s  "
                      f"{tokens(out) / took:7.1f} tok/s (whole process, model load included)",
                      flush=True)
        print(f"over {args.repeats} interleaved repeats, min / median / max:")
        for label, values in seconds.items():
            print(f"  {label:32s} {spread(values, 's')}")
        for label in runs:
            if label != "fused":
                ratios = [a / b for a, b in zip(seconds[label], seconds["fused"], strict=True)]
                print(f"  {label} / fused: {spread(ratios, 'x')}")
        unfused, fused = texts(Path(tmp, "0-1")), texts(Path(tmp, "0-0"))
        same = sum(fused.get(key) == text for key, text in unfused.items())
        print(f"records identical between fused and one-at-a-time: {same} of {len(unfused)} "
              f"({same / len(unfused):.1%})")


def spread(values: list[float], unit: str) -> str:
    return (f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f} {unit} "
            f"(n={len(values)})")


if __name__ == "__main__":
    main()
