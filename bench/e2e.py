"""End-to-end costs: decoding throughput through the harness vs a bare ``model.generate``,
sweep amortisation, analysis cost and peak memory.

python -m bench.e2e [--smoke] [--model smollm2|tiny|llama8b-random] [--batch 8] [--new 64]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench.selectors import machine
from bench.selectors import seconds as time_call
from harness import cache_dir
from harness.data import load_prompts
from harness.decode import continuation_lengths
from harness.models import load_model
from harness.records import TIMING
from harness.runner import build_selector, run_job
from harness.sampling import row_keys, sample_step

ROOT = Path(__file__).resolve().parent.parent
SELECTORS = [["selector=top_k", "selector.top_k=10"],
             ["selector=locally_typical", "selector.alpha=0.0", "selector.top_k=10"],
             ["selector=locally_typical_distance", "selector.alpha=0.7", "selector.top_k=10"]]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import harness.__main__ as entry

    with initialize_config_dir(config_dir=str(entry.CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def compile_probe(cfg) -> None:
    """Does transformers' static KV cache (which generate compiles on CUDA) pay here? Bare
    generate, best of 2 after one warm-up (the compile) each."""
    for cache in ("dynamic", "static"):
        extra = {} if cache == "dynamic" else {"cache_implementation": "static"}
        start = time.perf_counter()
        bare_generate(cfg, [99], **extra)
        first = time.perf_counter() - start
        rates = [tokens / seconds for seconds, tokens in
                 (bare_generate(cfg, [s], **extra) for s in (0, 1))]
        print(f"bare generate, {cache} KV cache: {max(rates):.1f} tok/s (first call "
              f"{first:.1f} s, compile included)")


def bare_generate(cfg, seeds: list[int], **extra) -> tuple[float, int]:
    """The plain library call on the same prompts, batches and per-batch seeds as the runner."""
    loaded = load_model(OmegaConf.to_object(cfg.model))
    gen = cfg.generation
    prompts = load_prompts(OmegaConf.to_object(cfg.dataset), loaded.tokenizer,
                           gen.prompt_tokens, gen.max_new_tokens)
    start, tokens = time.perf_counter(), 0
    for seed in seeds:
        for b, i in enumerate(range(0, len(prompts), gen.batch_size)):
            batch = loaded.tokenizer.pad(
                {"input_ids": [list(p.input_ids) for p in prompts[i : i + gen.batch_size]]},
                return_tensors="pt").to(loaded.device)
            torch.manual_seed(1000 * seed + b)
            out = loaded.model.generate(**batch, do_sample=True, top_k=10, top_p=1.0,
                                        temperature=1.0, max_new_tokens=gen.max_new_tokens,
                                        eos_token_id=loaded.eos_token_ids,
                                        pad_token_id=loaded.tokenizer.pad_token_id, **extra)
            new = out[:, batch["input_ids"].shape[1] :].cpu()
            tokens += int(continuation_lengths(new, loaded.eos_token_ids)[0].sum())
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens


def harness_generate(cfg, job_dir: Path) -> tuple[float, int]:
    start = time.perf_counter()
    path = run_job(cfg, job_dir)
    elapsed = time.perf_counter() - start
    return elapsed, sum(json.loads(line)["num_tokens"] for line in path.read_text().splitlines())


def throughput(common: list[str], out: Path, repeats: int) -> None:
    """Tokens/s of the harness vs the bare call over ``repeats`` interleaved runs (this
    machine's speed drifts): min / median / max of each, and of the per-repeat ratios."""
    base_cfg = compose([*common, *SELECTORS[0]])
    loaded = load_model(OmegaConf.to_object(base_cfg.model))  # loaded outside the timings
    bare_generate(base_cfg, [99])  # warm-up
    bare_rates, harness_rates = [], {i: [] for i in range(len(SELECTORS))}
    for repeat in range(repeats):
        seconds, tokens = bare_generate(base_cfg, list(base_cfg.generation.seeds))
        bare_rates.append(tokens / seconds)
        for i, overrides in enumerate(SELECTORS):
            cfg = compose([*common, *overrides])
            seconds, tokens = harness_generate(cfg, out / f"{repeat}_{'_'.join(overrides)}")
            harness_rates[i].append(tokens / seconds)
    print(f"bare model.generate(top_k=10): {spread(bare_rates)} tok/s (min / median / max of "
          f"{repeats} interleaved runs)")
    for i, overrides in enumerate(SELECTORS):
        ratios = [h / b for h, b in zip(harness_rates[i], bare_rates, strict=True)]
        print(f"harness {' '.join(overrides):62s}: {spread(harness_rates[i])} tok/s; "
              f"{spread(ratios, 3)}x bare")
    batch = base_cfg.generation.batch_size
    logits = torch.randn(batch, loaded.model.config.vocab_size, device=loaded.device) * 3
    keys = row_keys(torch.zeros(batch), torch.arange(batch)).to(loaded.device)
    step = batch / statistics.median(bare_rates)  # seconds of one decoding step of the batch
    graph_safe = loaded.device.type != "cpu"  # what harness.decode runs there
    for overrides in SELECTORS:
        groups = [(build_selector(compose([*common, *overrides]).selector), slice(0, batch))]
        cost = time_call(lambda g=groups: sample_step(logits, g, keys, 5, True, graph_safe),
                         loaded.device, 7)
        print(f"  {overrides[0]:42s} keyed sampling step (selector + diagnostics + noise): "
              f"{cost * 1e3:.3f} ms = {cost / step:.1%} of a {step * 1e3:.1f} ms decoding step")


def spread(values: list[float], digits: int = 1) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in (min(values), statistics.median(values),
                                                  max(values)))


PEAK_RSS_MIB: dict[str, float] = {}


def run(cmd: list[str], cwd: Path, label: str = "", **env: str) -> tuple[float, str]:
    """Wall time and stderr of ``cmd``; its own peak RSS goes into ``PEAK_RSS_MIB[label]``."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr,
                                 env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - start
        stderr.seek(0)
        text = stderr.read().decode(errors="replace")
    if status:
        raise RuntimeError(f"{' '.join(cmd)} failed: {text[-2000:]}")
    PEAK_RSS_MIB[label] = max(PEAK_RSS_MIB.get(label, 0.0), usage.ru_maxrss / 1024)
    return elapsed, text


def amortisation(common: list[str], out: Path) -> Path:
    """A 6-job multirun in one process vs (one process start and model load + the sum of the
    six jobs' generation times), and vs the same 6 jobs as 6 processes."""
    grid = ["selector=locally_typical_distance", "selector.alpha=0.2,0.5,1.0",
            "selector.top_k=5,10"]
    cfg = compose(common)
    start_and_load, _ = run([sys.executable, "-c", "from harness.models import ModelConfig, "
                             f"load_model; load_model(ModelConfig(source={cfg.model.source!r}))"],
                            out)
    one, _ = run([sys.executable, "-m", "harness", "-m", *common, *grid,
                  f"hydra.sweep.dir={out / 'one'}"], out)
    generation = sum(json.loads(p.read_text())["generate_seconds"]
                     for p in (out / "one").glob(f"*/{TIMING}"))
    separate = 0.0
    for alpha in (0.2, 0.5, 1.0):
        for k in (5, 10):
            separate += run([sys.executable, "-m", "harness", *common,
                             "selector=locally_typical_distance", f"selector.alpha={alpha}",
                             f"selector.top_k={k}", f"hydra.run.dir={out / f'sep{alpha}{k}'}"],
                            out, label="one job")[0]
    floor = start_and_load + generation
    print(f"6-job multirun in one process: {one:.1f} s = {one / floor:.3f}x (process start + "
          f"model load {start_and_load:.1f} s + generation {generation:.1f} s); "
          f"6 separate processes: {separate:.1f} s ({one / separate:.2f}x)")
    return out / "one"


def analysis_cost(sweep: Path, extra: list[str]) -> None:
    """First analysis of a sweep (empty feature cache; the built model and corpus are shared)
    vs the second of the unchanged sweep, with W&B off and with the default offline W&B."""
    cache = sweep.parent / "analysis-cache"
    cache.mkdir()
    for asset in ("models", "data"):
        (cache / asset).symlink_to(cache_dir() / asset)
    cmd = [sys.executable, "-m", "analysis", str(sweep), *extra]
    first, log = run([*cmd, "wandb=disabled"], ROOT, label="analysis", HARNESS_CACHE=str(cache))
    second, _ = run([*cmd, "wandb=disabled"], ROOT, HARNESS_CACHE=str(cache))
    offline, _ = run([*cmd, "wandb=offline"], ROOT, HARNESS_CACHE=str(cache))
    embedded = re.search(r"embedded (\d+) texts", log)
    jobs = len(list(sweep.glob(f"*/{TIMING}")))
    prompts = len((next(sweep.glob(f"*/{TIMING}")).parent / "generations.jsonl").read_text()
                  .splitlines())
    print(f"analysis of {jobs} jobs x {prompts} prompts: first {first:.1f} s, embedding "
          f"{embedded.group(1) if embedded else '?'} texts (at most {jobs} x {prompts} "
          f"continuations + {prompts} references + {prompts} prompts: references and prompts "
          f"once per sweep, not per job); second, unchanged: {second:.1f} s "
          f"({second / first:.1%} of the first); second with offline W&B runs and write-back: "
          f"{offline:.1f} s")
    for label, mib in PEAK_RSS_MIB.items():
        if label:
            print(f"peak RSS, {label} process: {mib:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny model, seconds: checks it runs")
    parser.add_argument("--model", default=None)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--compile-probe", action="store_true",
                        help="bare generate with a static KV cache (compiled) vs the default")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new", type=int, default=48)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["amortisation", "analysis"])
    args = parser.parse_args()
    model = args.model or ("tiny" if args.smoke else "smollm2")
    dataset = args.dataset or ("tiny" if model == "tiny" else "austen")
    common = [f"model={model}", f"dataset={dataset}", f"dataset.limit={args.limit}",
              f"generation.batch_size={args.batch}", f"generation.max_new_tokens={args.new}",
              "generation.seeds=[0]", "wandb=disabled"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"end-to-end on {machine(device)}: {' '.join(common)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        throughput(common, out, 1 if args.smoke else args.repeats)
        if args.compile_probe:
            compile_probe(compose(common))
        if "amortisation" not in args.skip:
            sweep = amortisation(common, out)
            if "analysis" not in args.skip:
                scorer = "tiny" if model == "tiny" else "bundled:smollm2"
                analysis_cost(sweep, [f"metrics.coherence.scorer={scorer}"])


if __name__ == "__main__":
    main()
