"""Per-step cost of every selector against the nearest transformers warper and the floor.

python -m bench.selectors [--device cuda] [--smoke]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from transformers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from harness.sampling import perturb, row_keys, step_keys
from harness.selectors import SELECTORS, make_selector

NEAREST = {
    "top_k": lambda: TopKLogitsWarper(10), "top_p": lambda: TopPLogitsWarper(0.95),
    "min_p": lambda: MinPLogitsWarper(0.1), "epsilon": lambda: EpsilonLogitsWarper(3e-4),
    "eta": lambda: EtaLogitsWarper(3e-4), "typical": lambda: TypicalLogitsWarper(0.95),
}
TYPICAL = NEAREST["typical"]


def seconds(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` (synchronised on CUDA) after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="one small shape, to check it runs")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = torch.device(args.device)
    shapes = [(8, 4096)] if args.smoke else [(b, v) for v in (49152, 128256) for b in (1, 8, 64)]
    print(f"selector step cost on {machine(device)}, torch {torch.__version__}; ms per call "
          "(median); ratios against the nearest transformers warper, TypicalLogitsWarper "
          "(a full sort) and the floor (one log_softmax + one topk)\n")
    header = (f"{'shape':>13} {'selector':>25} {'keep_mask':>10} {'processor':>10} "
              f"{'warper':>9} {'x warper':>9} {'x typical':>10} {'x floor':>8}")
    print(header)
    for batch, vocab in shapes:
        logits = torch.randn(batch, vocab, device=device) * 3
        repeats = 3 if args.smoke else args.repeats
        floor = seconds(lambda x=logits: x.log_softmax(-1).topk(10, dim=-1), device, repeats)
        typical = seconds(lambda x=logits: TYPICAL()(None, x), device, repeats)
        for name in sorted(SELECTORS):
            sel = make_selector(name)
            processor = sel.logits_processor()
            keep = seconds(lambda x=logits, s=sel: s.keep_mask(x), device, repeats)
            proc = seconds(lambda x=logits, p=processor: p(None, x), device, repeats)
            warper = NEAREST[name]() if name in NEAREST else None
            base = seconds(lambda x=logits, w=warper: w(None, x), device, repeats) \
                if warper else float("nan")
            print(f"{batch:>4}x{vocab:<8} {name:>25} {keep * 1e3:10.3f} {proc * 1e3:10.3f} "
                  f"{base * 1e3:9.3f} {proc / base:9.2f} {proc / typical:10.3f} "
                  f"{proc / floor:8.2f}")
        print(f"{batch:>4}x{vocab:<8} {'(floor, typical warper)':>25} {floor * 1e3:10.3f} "
              f"{typical * 1e3:10.3f}")
    sampler_shapes = [(8, 4096)] if args.smoke else [(8, 49152), (88, 49152), (64, 128256)]
    sampler_cost(device, sampler_shapes, 3 if args.smoke else args.repeats)


def sampler_cost(device: torch.device, shapes: list[tuple[int, int]], repeats: int) -> None:
    """The keyed sampler (noise + argmax) against what it replaces (softmax + multinomial), for a
    top-10 kept set (noise hashed at the kept tokens only) and a full one (every token)."""
    print(f"\nsampler step cost on {machine(device)}; ms per call (median)\n")
    print(f"{'shape':>13} {'kept':>6} {'softmax+multinomial':>20} {'keyed':>8} {'ratio':>6}")
    for batch, vocab in shapes:
        logits = torch.randn(batch, vocab, device=device) * 3
        keys = step_keys(row_keys(torch.arange(batch), torch.arange(batch)), 7).to(device)
        for kept, keep in (("top10", make_selector("top_k").keep_mask(logits)),
                           ("all", torch.ones_like(logits, dtype=torch.bool))):
            masked = logits.where(keep, float("-inf"))
            old = seconds(lambda x=masked: torch.multinomial(x.softmax(-1), 1), device, repeats)
            new = seconds(lambda x=logits, k=keep, r=keys: perturb(x, k, r).argmax(-1), device,
                          repeats)
            print(f"{batch:>4}x{vocab:<8} {kept:>6} {old * 1e3:20.3f} {new * 1e3:8.3f} "
                  f"{new / old:6.2f}")


if __name__ == "__main__":
    main()
