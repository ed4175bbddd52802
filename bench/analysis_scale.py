"""The analysis at study size, without a model: a synthetic sweep of 11 configurations x
2,500 prompts x 3 seeds (82,500 records, written as the runner writes them), and each stage's
wall time and peak memory (max RSS of a fresh process per stage):

- load: ``find_jobs`` (read, dedupe, common prompts);
- table: per-text sufficient statistics (real n-gram counts; coherence and log-likelihood
  drawn at random, since they need a featurizer and a scorer), ``summarize`` and
  ``add_uncertainty`` (intervals, Δs on common pairs, sign-flip tests, Holm) without MAUVE;
- mauve_swap: one Δ MAUVE swap test (random 384-d features, as MiniLM's, for the 7,500 texts
  of each side and 2,500 references), B = 10,000, one k-means seed.

Featurization and scoring are left out: they are model-bound and cached on disk.

python -m bench.analysis_scale [--smoke] [--prompts 2500] [--seeds 3] [--samples 10000]
                               [--stages load table mauve_swap]
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

SELECTORS = [{"method": "locally_typical_distance", "alpha": a, "top_k": 10, "mass": None}
             for a in (1.0, 0.7, 0.5, 0.2)] + [
    {"method": "locally_typical", "alpha": a, "top_k": 10, "mass": None} for a in (0.0, 0.5)] + [
    {"method": "top_k", "top_k": 10}, {"method": "top_p", "top_p": 0.95},
    {"method": "typical", "typical_p": 0.95}, {"method": "min_p", "min_p": 0.1},
    {"method": "ancestral"}]


def write_sweep(out: Path, prompts: int, seeds: int) -> None:
    """One job dir per configuration, with job.yaml and generations.jsonl as the runner writes
    them; texts are random words, more repetitive for smaller alphas."""
    import json

    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(3000)])
    references = [" ".join(rng.choice(words, 48)) for _ in range(prompts)]
    for number, selector in enumerate(SELECTORS):
        config = {"model": {"name": "synthetic", "source": "tiny", "dtype": "auto"},
                  "dataset": {"name": "synthetic", "data_files": None, "shard": 0,
                              "num_shards": 1},
                  "selector": {**selector, "temperature": 1.0},
                  "generation": {"prompt_tokens": 32, "max_new_tokens": 48},
                  "sampler": "bench", "config_hash": f"{number:012d}"}
        job_dir = out / f"job{number}"
        job_dir.mkdir(parents=True)
        (job_dir / "job.yaml").write_text(yaml.safe_dump(config))
        vocabulary = 50 + 250 * number
        with (job_dir / "generations.jsonl").open("w") as f:
            for seed in range(seeds):
                for prompt in range(prompts):
                    text = " ".join(rng.choice(words[:vocabulary], 48))
                    f.write(json.dumps({
                        "prompt_id": prompt, "seed": seed, "prompt": f"prompt {prompt}",
                        "continuation": text, "reference": references[prompt],
                        "num_tokens": 48, "finish_reason": "length",
                        "config_hash": config["config_hash"], "topk_identical_rate": 0.5,
                        "kept_mean": 10.0, "mass_mean": 0.9, "rank_mean": 2.0}) + "\n")


def stage_load(sweep: Path, samples: int) -> str:
    from analysis.load import find_jobs

    jobs = find_jobs([sweep])
    return f"{len(jobs)} configurations, {sum(len(j.records) for j in jobs)} records"


def stage_table(sweep: Path, samples: int) -> str:
    from analysis.diversity import diversity_metrics, ngram_counts
    from analysis.load import find_jobs
    from analysis.mauve import MauveConfig
    from analysis.stats import BootstrapConfig
    from analysis.table import NGRAM_COLUMNS, configuration, parameters, per_text_rows, summarize
    from analysis.uncertainty import BaselineConfig, add_uncertainty

    jobs = find_jobs([sweep])
    rng = np.random.default_rng(1)
    rows, texts = [], []
    for job in jobs:
        base = configuration(job)
        for seed in sorted({r["seed"] for r in job.records}):
            records = [r for r in job.records if r["seed"] == seed]
            continuations = [r["continuation"] for r in records]
            counts = ngram_counts(continuations)
            stats = {name: counts[:, i] for i, name in enumerate(NGRAM_COLUMNS)}
            stats["coherence"] = rng.uniform(0, 1, len(records))
            stats["ll_sum"] = -rng.uniform(50, 150, len(records))
            stats["ll_tokens"] = np.full(len(records), 48.0)
            texts += per_text_rows(base, records, seed, stats)
            rows.append({**base, "seed": seed, "n": len(records),
                         **diversity_metrics(continuations)})
    summary = summarize(pd.DataFrame(rows), pd.DataFrame(texts), jobs)
    cfg = BootstrapConfig(samples=samples)
    summary, _ = add_uncertainty(summary, pd.DataFrame(texts), jobs, MauveConfig(), cfg,
                                 BaselineConfig(), parameters(jobs))
    tests = int(summary[[c for c in summary if c.endswith("_holm")]].notna().sum().sum())
    return f"{len(summary)} rows, {tests} tests, {len(texts)} texts"


def stage_mauve_swap(sweep: Path, samples: int) -> str:
    from analysis.mauve import MauveConfig, mauve_swap_test
    from analysis.stats import sign_flips

    prompts = len(list((sweep / "job0" / "generations.jsonl").open())) // 3
    seeds = 3
    rng = np.random.default_rng(2)
    human = rng.normal(size=(prompts, 384)).astype(np.float32)
    base = rng.normal(size=(prompts * seeds, 384)).astype(np.float32)
    method = base + rng.normal(scale=0.5, size=base.shape).astype(np.float32)
    prompt_of_text = np.tile(np.arange(prompts), seeds)
    flips = sign_flips(prompts, samples, 0)
    delta, p = mauve_swap_test(human, base, method, prompt_of_text, MauveConfig(kmeans_seeds=1),
                               flips)
    return f"Δ MAUVE {delta:.4f}, p {p:.4f}, B = {len(flips)}, {len(base)} texts a side"


STAGES = {"load": stage_load, "table": stage_table, "mauve_swap": stage_mauve_swap}


def child(name: str, sweep: Path, samples: int, queue) -> None:
    start = time.perf_counter()
    what = STAGES[name](sweep, samples)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    queue.put((what, seconds, peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="20 prompts, 300 resamples")
    parser.add_argument("--prompts", type=int, default=2500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    args = parser.parse_args()
    if args.smoke:
        args.prompts, args.samples = 20, 300
    context = multiprocessing.get_context("spawn")  # a fresh process: its own peak memory
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep"
        start = time.perf_counter()
        write_sweep(sweep, args.prompts, args.seeds)
        print(f"analysis at scale on {platform.machine()}, {multiprocessing.cpu_count()} cores: "
              f"{len(SELECTORS)} configurations x {args.prompts} prompts x {args.seeds} seeds "
              f"(written in {time.perf_counter() - start:.1f} s), bootstrap.samples="
              f"{args.samples}")
        print("| stage | wall s | peak RSS MiB | what |\n|---|---|---|---|")
        for name in args.stages:
            queue = context.Queue()
            process = context.Process(target=child, args=(name, sweep, args.samples, queue))
            process.start()
            what, seconds, peak = queue.get()
            process.join()
            print(f"| {name} | {seconds:.1f} | {peak:.0f} | {what} |")


if __name__ == "__main__":
    main()
