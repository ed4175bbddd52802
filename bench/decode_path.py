"""The decode path against what it replaced, in one process, interleaved: ``harness.decode``'s
static-shape loop (eager, as on CPU) vs transformers' ``generate`` with ``KeyedSampler`` (the
runner's loop before issue 13), on the same fused batch of ``sweeps/seed_comparison`` rows; and
the same jobs one at a time at the same batch size (each job's rows alone, fewer than it).

python -m bench.decode_path [--model smollm2] [--rows-per-job 2] [--new 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from bench.e2e import compose
from bench.selectors import machine
from bench.study import jobs
from harness.data import load_prompts
from harness.decode import Decoder, generation_config
from harness.models import load_model
from harness.runner import build_selector
from harness.sampling import KeyedSampler, row_keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 1 repeat")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--rows-per-job", type=int, default=2)
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.smoke:
        args.model, args.new, args.repeats = "tiny", 4, 1
    dataset = args.dataset or ("tiny" if args.model == "tiny" else "austen")
    common = [f"model={args.model}", f"dataset={dataset}", f"dataset.limit={args.rows_per_job}",
              f"generation.max_new_tokens={args.new}", "wandb=disabled"]
    configs = jobs(11)
    cfg = compose(common)
    loaded = load_model(OmegaConf.to_object(cfg.model))
    prompts = load_prompts(OmegaConf.to_object(cfg.dataset), loaded.tokenizer,
                           cfg.generation.prompt_tokens, args.new)
    n = len(prompts)
    groups = [(build_selector(compose([*common, *c]).selector), slice(i * n, (i + 1) * n))
              for i, c in enumerate(configs)]
    rows = n * len(configs)
    ids = torch.tensor([list(p.input_ids) for p in prompts] * len(configs))
    keys = row_keys(torch.zeros(rows), torch.tensor([p.prompt_id for p in prompts] * len(
        configs)))
    decoder = Decoder(loaded, rows, cfg.generation.prompt_tokens, args.new, compile=False)
    stop, alive = SimpleNamespace(signum=None), torch.ones(rows, dtype=torch.bool)

    def new_path() -> torch.Tensor:
        return decoder.run(ids, keys, groups, True, alive, stop)[0]

    single = Decoder(loaded, n, cfg.generation.prompt_tokens, args.new, compile=False)

    def one_at_a_time() -> None:
        for i, (selector, _) in enumerate(groups):
            part = slice(i * n, (i + 1) * n)
            single.run(ids[part], keys[part], [(selector, slice(0, n))], True, alive[part], stop)

    def old_path() -> torch.Tensor:
        sampler = KeyedSampler(groups, keys, ids.shape[1], record=True)
        return loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     generation_config=generation_config(loaded, args.new),
                                     logits_processor=[sampler])[:, ids.shape[1]:]

    print(f"decode path on {machine(loaded.device)}: {len(configs)} seed_comparison jobs x "
          f"{n} prompts = {rows} rows per forward, {args.new} new tokens", flush=True)
    times: dict[str, list[float]] = {"generate + KeyedSampler (before)": [],
                                     "harness.decode (now)": [],
                                     "now, one job at a time": []}
    with torch.inference_mode():
        new_path(), old_path(), one_at_a_time()  # warm-up
        for _ in range(args.repeats):
            for label, fn in zip(times, (old_path, new_path, one_at_a_time), strict=True):
                start = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - start)
                print(f"  {label:34s} {times[label][-1]:7.2f} s", flush=True)
    print(f"over {args.repeats} interleaved repeats, min / median / max:")
    for label, values in times.items():
        print(f"  {label:34s} {spread(values)} s")
    before, now, alone = times.values()
    print(f"  now / before: {spread([b / a for a, b in zip(before, now, strict=True)])}x")
    print(f"  one job at a time / fused: "
          f"{spread([b / a for a, b in zip(now, alone, strict=True)])}x")


def spread(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in (min(values), statistics.median(values), max(values)))


if __name__ == "__main__":
    main()
