"""A study-sized fused sweep on the decode path (issue 13): one run without compilation, then
two compiled runs in the same process (the first pays the compile, the second is steady
state), each as tok/s and ms per decode step against the H200's floor, and what the 20 M-token
seed comparison would take.

python -m bench.study [--smoke] [--model smollm2_random] [--dataset synthetic] [--jobs 11]
                      [--limit 256] [--new 256] [--batch auto] [--today 6425]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench.e2e import compose
from bench.selectors import machine
from harness import decode
from harness.models import load_model
from harness.runner import generate_jobs
from harness.sweep import load_sweep

STUDY_TOKENS = 20e6  # 11 configurations x 2,500 prompts x 3 seeds x 256 new tokens, about
# H200: HBM bandwidth and dense bfloat16 peak, for the floor of a decode step
BANDWIDTH, PEAK_FLOPS = 4.8e12, 990e12


def jobs(count: int) -> list[list[str]]:
    """The first ``count`` configurations of ``sweeps/seed_comparison``, one override list each."""
    out = []
    for grid in load_sweep("seed_comparison"):
        variants = [[]]
        for override in grid:
            key, values = override.split("=", 1)
            variants = [[*v, f"{key}={value}"] for v in variants for value in values.split(",")]
        out += variants
    return out[:count]


def floor_ms(cfg, rows: int) -> float:
    """Weights and the mean KV cache read once per step, or 2 FLOPs per parameter per token."""
    loaded = load_model(OmegaConf.to_object(cfg.model))
    params = sum(p.numel() for p in loaded.model.parameters())
    itemsize = loaded.model.dtype.itemsize
    gen = cfg.generation
    mean_kv = decode.kv_bytes_per_token(loaded) * (gen.prompt_tokens + gen.max_new_tokens / 2)
    memory = (params * itemsize + rows * mean_kv) / BANDWIDTH
    return 1e3 * max(memory, 2 * params * rows / PEAK_FLOPS)


def run(common: list[str], configs: list[list[str]], out: Path) -> tuple[float, int, int, int]:
    """Seconds, new tokens, rows per forward and batches of one fused generation."""
    specs = [(compose([*common, *c]), out / str(i), str(i)) for i, c in enumerate(configs)]
    calls = []
    real = decode.decode_batch

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    decode.decode_batch = counted
    try:
        start = time.perf_counter()
        done = generate_jobs(specs)
        seconds = time.perf_counter() - start
    finally:
        decode.decode_batch = real
    return seconds, sum(j.new_tokens for j in done), done[0].timing["rows_per_forward"], len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, seconds")
    parser.add_argument("--model", default="smollm2_random")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--jobs", type=int, default=11)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--batch", default="auto")
    parser.add_argument("--today", type=float, default=None,
                        help="today's tok/s for this shape (bench/RESULTS.md), for the ratio")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.dataset, args.jobs, args.limit, args.new = "tiny", "tiny", 3, 4, 8
    common = [f"model={args.model}", f"dataset={args.dataset}", f"dataset.limit={args.limit}",
              f"generation.max_new_tokens={args.new}", "generation.seeds=[0]",
              f"generation.batch_size={args.batch}", "wandb=disabled"]
    configs = jobs(args.jobs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"study on {machine(device)}: {len(configs)} configurations fused, "
          f"{' '.join(common)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for label, extra in (("eager", []), ("compiled, first", ["generation.compile=true"]),
                             ("compiled, steady", ["generation.compile=true"])):
            seconds, tokens, rows, batches = run([*common, *extra], configs,
                                                 Path(tmp, label.replace(", ", "-")))
            results[label] = (seconds, tokens)
            step = 1e3 * seconds / (batches * args.new)
            floor = floor_ms(compose(common), rows)
            print(f"  {label:17s} {seconds:7.1f} s  {tokens / seconds:9.0f} tok/s  {rows} rows x "
                  f"{batches} batches, {step:.2f} ms per step (H200 floor {floor:.2f} ms, "
                  f"{step / floor:.1f}x)", flush=True)
    (first, tokens), (steady, _) = results["compiled, first"], results["compiled, steady"]
    compile_s = first - steady
    print(f"  compile (first compiled run - steady run): {compile_s:.1f} s")
    for label in ("eager", "compiled, steady"):
        seconds, count = results[label]
        rate = count / seconds
        once = compile_s if label.startswith("compiled") else 0.0
        ratio = f", {rate / args.today:.2f}x today's {args.today:.0f} tok/s" if args.today else ""
        print(f"  {label}: {rate:.0f} tok/s{ratio}; the 20 M-token study: "
              f"{(STUDY_TOKENS / rate + once) / 3600:.2f} h (compile included)")


if __name__ == "__main__":
    main()
