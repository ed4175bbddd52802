"""The analysis at study size, without a model: a synthetic sweep of 11 configurations x
2,500 prompts x 3 seeds (82,500 records, written as the runner writes them), and each stage's
CPU time (user + sys of its process), wall time and peak memory (max RSS of a fresh process per
stage; the stages after load read the jobs first, outside the timing but inside the peak):

- load: ``find_jobs`` (read, dedupe, common prompts);
- table: per-text sufficient statistics (real n-gram counts; coherence and log-likelihood
  drawn at random, since they need a featurizer and a scorer), ``summarize`` and
  ``add_uncertainty`` (intervals, Δs on common pairs, sign-flip tests, Holm) without MAUVE;
- reference: the floor the table stage is held to: the same statistics written plainly, with
  numpy vectorised over everything (each text's n-grams counted once; one float32 resample
  matrix; one product for every row's and part's bootstrap sums, one for every row's
  sign-flip nulls);
- mauve_swap: one Δ MAUVE swap test (random 384-d features, as MiniLM's, for the 7,500 texts
  of each side and 2,500 references), B = 10,000, one k-means seed.

Featurization and scoring are left out: they are model-bound and cached on disk.

python -m bench.analysis_scale [--smoke] [--prompts 2500] [--seeds 3] [--samples 10000]
                               [--stages load table reference mauve_swap]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
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


def stage_load(sweep: Path, jobs: list, samples: int) -> str:
    from analysis.load import find_jobs

    jobs = find_jobs([sweep])
    return f"{len(jobs)} configurations, {sum(len(j.records) for j in jobs)} records"


def random_scores(rng: np.random.Generator, texts: int) -> dict[str, np.ndarray]:
    """Coherence and log-likelihoods as a featurizer and a scorer would give them."""
    return {"coherence": rng.uniform(0, 1, texts), "ll_sum": -rng.uniform(50, 150, texts),
            "ll_tokens": np.full(texts, 48.0)}


def stage_table(sweep: Path, jobs: list, samples: int) -> str:
    from analysis.mauve import MauveConfig
    from analysis.stats import BootstrapConfig
    from analysis.table import configuration, parameters, per_text_rows, summarize
    from analysis.uncertainty import BaselineConfig, add_uncertainty

    rng = np.random.default_rng(1)
    rows, texts = [], []
    for job in jobs:
        base = configuration(job)
        for seed in sorted({r["seed"] for r in job.records}):
            records = [r for r in job.records if r["seed"] == seed]
            stats, row = text_statistics([r["continuation"] for r in records])
            stats.update(random_scores(rng, len(records)))
            texts.append(per_text_rows(base, records, seed, stats))
            rows.append({**base, "seed": seed, "n": len(records), **row})
    per_text = (pd.concat(texts, ignore_index=True) if isinstance(texts[0], pd.DataFrame)
                else pd.DataFrame([t for ts in texts for t in ts]))  # older: dicts
    summary = summarize(pd.DataFrame(rows), per_text, jobs)
    cfg = BootstrapConfig(samples=samples)
    summary, _ = add_uncertainty(summary, per_text, jobs, MauveConfig(), cfg,
                                 BaselineConfig(), parameters(jobs))
    tests = int(summary[[c for c in summary if c.endswith("_holm")]].notna().sum().sum())
    return f"{len(summary)} rows, {tests} tests, {len(per_text)} texts"


def text_statistics(texts: list[str]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-text n-gram columns and the seed's diversity row, as ``table.text_metrics`` gets
    them (older checkouts: two functions, each counting)."""
    from analysis.table import NGRAM_COLUMNS

    try:
        from analysis.diversity import ngram_statistics
    except ImportError:  # before issue 26
        from analysis.diversity import diversity_metrics, ngram_counts

        counts, row = ngram_counts(texts), diversity_metrics(texts)
    else:
        counts, row = ngram_statistics(texts)
    return {name: counts[:, i] for i, name in enumerate(NGRAM_COLUMNS)}, row


def stage_reference(sweep: Path, jobs: list, samples: int) -> str:
    """The table stage's statistics, plainly vectorised: per text its n-gram counts (one set
    per n-gram size, reused for the corpus distinct-n), per (row, prompt) the sums of every
    part, one product of a float32 resample matrix with all of them, one of the sign flips with
    every row's differences from the baseline, percentiles, p-values and Holm."""
    rng = np.random.default_rng(1)
    names = [j.config["selector"]["method"] + str(j.config["selector"].get("top_k")) for j in jobs]
    prompts = sorted({r["prompt_id"] for r in jobs[0].records})
    where = {p: i for i, p in enumerate(prompts)}
    sums = np.zeros((len(jobs), len(prompts), 24))  # u/t for n = 2, 3, 4, then 2 per mean
    distinct = np.zeros((len(jobs), 4))
    for row, job in enumerate(jobs):
        parts = np.empty((len(job.records), 24))
        split = [r["continuation"].split() for r in job.records]
        lengths = np.array([len(words) for words in split])
        text_of = np.repeat(np.arange(len(split)), lengths)
        position = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        gram = ids = pd.factorize(np.array([w for ws in split for w in ws], object))[0]
        totals = [len(ids)]
        distinct[row, 0] = len(pd.unique(ids))
        for n in (2, 3, 4):  # the n-gram at i: the (n-1)-gram at i, then word i + n - 1
            gram = pd.factorize(gram[: len(ids) - n + 1] * len(ids) + ids[n - 1 :])[0]
            fits = position[: len(gram)] <= lengths[text_of[: len(gram)]] - n
            owner, mine = text_of[: len(gram)][fits], gram[fits]
            unique = np.bincount(pd.unique(owner * (mine.max() + 1) + mine) // (mine.max() + 1),
                                 minlength=len(split))
            parts[:, 2 * n - 4 : 2 * n - 2] = np.stack(
                [unique, np.bincount(owner, minlength=len(split))], 1)
            distinct[row, n - 1] = len(pd.unique(mine))
            totals.append(len(mine))
        distinct[row] /= totals
        scores = random_scores(rng, len(job.records))
        means = [scores["coherence"], np.ones(len(parts)), scores["ll_sum"] / 48, np.ones(
            len(parts)), scores["ll_sum"], scores["ll_tokens"]]
        means += [np.array([r["finish_reason"] == "eos" for r in job.records], float),
                  np.ones(len(parts))]
        for key in ("num_tokens", "topk_identical_rate", "kept_mean", "mass_mean", "rank_mean"):
            means += [np.array([r[key] for r in job.records], float), np.ones(len(parts))]
        parts[:, 6:] = np.stack(means, 1)
        np.add.at(sums[row], [where[r["prompt_id"]] for r in job.records], parts)

    def statistics(s: np.ndarray) -> np.ndarray:  # [..., 24] -> [..., 13 metrics]
        ratios = s[..., 0::2] / s[..., 1::2]
        diversity = ratios[..., :3].prod(-1, keepdims=True)
        return np.concatenate([diversity, 100 * (1 - ratios[..., :3]), ratios[..., 3:5],
                               np.exp(-ratios[..., 5:6]), ratios[..., 6:]], -1)

    generator = np.random.default_rng(0)
    counts = np.empty((samples, len(prompts)), np.float32)  # drawn in blocks of rows: no
    flips = np.empty((samples, len(prompts)), np.float32)  # int64 copy of the whole
    for start in range(0, samples, 500):
        rows = min(samples, start + 500) - start
        counts[start : start + rows] = generator.multinomial(
            len(prompts), np.full(len(prompts), 1 / len(prompts)), size=rows)
        flips[start : start + rows] = generator.integers(0, 2, size=(rows, len(prompts)))
    flat = sums.transpose(1, 0, 2).reshape(len(prompts), -1).astype(np.float32)
    replicates = statistics((counts @ flat).reshape(samples, len(jobs), 24).astype(float))
    cells = np.percentile(replicates, [2.5, 97.5], axis=0)
    base = names.index("top_k10")
    deltas = replicates - replicates[:, base : base + 1]
    delta_intervals = np.percentile(deltas, [2.5, 97.5], axis=0)
    totals = sums.sum(1)
    difference = (sums[base] - sums).transpose(1, 0, 2).reshape(len(prompts), -1)
    swapped = (flips @ difference.astype(np.float32)).reshape(samples, len(jobs), 24)
    null = statistics(totals + swapped) - statistics(totals[base] - swapped)
    observed = statistics(totals) - statistics(totals[base])
    exceed = (np.abs(null) >= np.abs(observed) - 1e-12).sum(0)
    p = (exceed + 1) / (samples + 1)
    p = np.delete(p, base, axis=0).ravel()
    order = np.argsort(p)
    adjusted = np.maximum.accumulate(np.minimum(1, (len(p) - np.arange(len(p))) * p[order]))
    assert np.isfinite(cells).all() and np.isfinite(delta_intervals).all() and distinct.all()
    return (f"{len(jobs)} rows, {len(adjusted)} tests, "
            f"{sum(len(j.records) for j in jobs)} texts")


def stage_mauve_swap(sweep: Path, jobs: list, samples: int) -> str:
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


STAGES = {"load": stage_load, "table": stage_table, "reference": stage_reference,
          "mauve_swap": stage_mauve_swap}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(name: str, sweep: Path, samples: int, queue) -> None:
    from analysis.load import find_jobs

    jobs = [] if name in ("load", "mauve_swap") else find_jobs([sweep])
    start, cpu = time.perf_counter(), cpu_seconds()
    what = STAGES[name](sweep, jobs, samples)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    queue.put((what, cpu, seconds, peak))


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
        print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        print("| stage | CPU s (user + sys) | wall s | peak RSS MiB | what |\n"
              "|---|---|---|---|---|")
        cpus = {}
        for name in args.stages:
            queue = context.Queue()
            process = context.Process(target=child, args=(name, sweep, args.samples, queue))
            process.start()
            what, cpu, seconds, peak = queue.get()
            process.join()
            cpus[name] = cpu
            print(f"| {name} | {cpu:.1f} | {seconds:.1f} | {peak:.0f} | {what} |")
        if {"table", "reference"} <= set(cpus):
            print(f"table / reference CPU time: {cpus['table'] / cpus['reference']:.2f}x; load "
                  f"average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
