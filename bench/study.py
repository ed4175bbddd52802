"""A study-sized fused sweep on the decode path (issue 13): one run without compilation, then
two compiled runs in the same process (the first pays the compile, the second is steady
state), each as tok/s and ms per decode step against the H200's floor, and what the 20 M-token
seed comparison would take. After the eager run and after the steady one, ``--profile-steps``
decode steps of one batch of the same shape run under ``torch.profiler`` (the process's decoder,
compiled or not): the top kernels and how much of a step's wall time the device was busy, so a
missed target says where the time goes.

python -m bench.study [--smoke] [--model smollm2_random] [--dataset synthetic] [--jobs 11]
                      [--limit 256] [--new 256] [--batch auto] [--today 6425]
                      [--profile-steps 32]
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


class AfterSteps:
    """A ``stop`` for ``Decoder.run`` that ends a batch after ``steps`` decode steps (it reads
    ``signum`` once per step)."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    @property
    def signum(self) -> int | None:
        self.left -= 1
        return None if self.left > 0 else 0


def profile(label: str, steps: int) -> None:
    """Profile ``steps`` decode steps (the prefill included) of one batch on the process's
    decoder, as the last generation left it: its top kernels by device time (CPU: by time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    dec = decode._DECODER[0]
    device = dec.keys.device
    vocab = dec.loaded.model.config.get_text_config(decoder=True).vocab_size
    input_ids = torch.randint(vocab, (dec.rows, dec.prompt_tokens), device=device)
    alive = torch.ones(dec.rows, dtype=torch.bool, device=device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with torch.inference_mode(), torch_profile(activities=activities) as prof:
        start = time.perf_counter()
        dec.run(input_ids, dec.keys.clone(), dec.groups, dec.record, alive, AfterSteps(steps))
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    busy = sum(e.self_device_time_total for e in events) / 1e6 if cuda else float("nan")
    share = (f"; device busy {busy / wall:.0%} of the wall time, host-bound the rest"
             if cuda else "")
    print(f"  profile, {label}: {steps} steps of one batch of {dec.rows} rows (prefill "
          f"included), {1e3 * wall / steps:.2f} ms per step under the profiler{share}",
          flush=True)
    print(events.table(sort_by=sort, row_limit=15, max_name_column_width=60), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, seconds")
    parser.add_argument("--model", default="smollm2_random")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--jobs", type=int, default=11)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--batch", default="auto")
    parser.add_argument("--profile-steps", type=int, default=32,
                        help="decode steps profiled after the eager and the steady run (0: none)")
    parser.add_argument("--today", type=float, default=None,
                        help="today's tok/s for this shape (bench/RESULTS.md), for the ratio")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.dataset, args.jobs, args.limit, args.new = "tiny", "tiny", 3, 4, 8
        args.profile_steps = min(args.profile_steps, 4)
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
            results[label] = seconds
            rate = tokens / seconds
            step = 1e3 * seconds / (batches * args.new)
            floor = floor_ms(compose(common), rows)
            print(f"  {label:17s} {seconds:7.1f} s  {rate:9.0f} tok/s  {rows} rows x "
                  f"{batches} batches, {step:.2f} ms per step (H200 floor {floor:.2f} ms, "
                  f"{step / floor:.1f}x)", flush=True)
            # each figure as soon as it is measured: a run cut short still reports these
            once = 0.0
            if label == "compiled, steady":
                once = results["compiled, first"] - seconds
                print(f"  compile (first compiled run - steady run): {once:.1f} s", flush=True)
            if label != "compiled, first":
                ratio = f", {rate / args.today:.2f}x today's {args.today:.0f} tok/s" \
                    if args.today else ""
                print(f"  {label}: {rate:.0f} tok/s{ratio}; the 20 M-token study: "
                      f"{(STUDY_TOKENS / rate + once) / 3600:.2f} h (compile included)",
                      flush=True)
                if args.profile_steps:
                    profile(label, min(args.profile_steps, args.new))

if __name__ == "__main__":
    main()
