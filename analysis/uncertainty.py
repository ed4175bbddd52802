"""Intervals for every row of the summary and paired comparisons with a baseline row.

For each metric computed from per-text sufficient statistics (``per_text.csv``) the summary
gets ``<metric>_lo``/``_hi`` (a 95% percentile bootstrap over prompts) and, for every
configuration but the baseline, ``delta_<metric>`` with its paired-bootstrap interval and a
paired sign-flip p-value ``p_<metric>``, Holm-adjusted over the whole table in
``p_<metric>_holm``. MAUVE keeps its mean ± std over k-means and generation seeds (bootstrap
replicates of MAUVE are biased, and their percentile intervals under-cover), and its Δ is
tested by swapping the two configurations' k-means labels on one shared codebook. Corpus
``distinct_n`` gets no interval: duplicated texts in a bootstrap resample bias it down.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.features import disk_cached, featurize
from analysis.load import REFERENCE_KEYS, Job
from analysis.mauve import MauveConfig, mauve_swap_test
from analysis.stats import (
    BootstrapConfig,
    bootstrap,
    compare,
    holm,
    minimum_detectable_effect,
    ratio,
    resample_counts,
    sign_flips,
)

log = logging.getLogger(__name__)


def _rep(s: np.ndarray) -> np.ndarray:
    return 100 * (1 - ratio(s))


def _diversity(s: np.ndarray) -> np.ndarray:
    return ratio(s[..., 0:2]) * ratio(s[..., 2:4]) * ratio(s[..., 4:6])


# metric -> (per-text columns whose per-prompt sums it needs, the statistic of those sums)
PARTS = {
    "diversity": (["u2", "t2", "u3", "t3", "u4", "t4"], _diversity),
    "rep_2": (["u2", "t2"], _rep),
    "rep_3": (["u3", "t3"], _rep),
    "rep_4": (["u4", "t4"], _rep),
    "coherence": (["coherence", "texts"], ratio),
    "coherence_ll": (["ll_mean", "scored"], ratio),
    "perplexity": (["ll_sum", "ll_tokens"], lambda s: np.exp(-ratio(s))),
    "mean_tokens": (["num_tokens", "texts"], ratio),
    "eos_rate": (["eos", "texts"], ratio),
    **{d: ([d, "texts"], ratio) for d in ("topk_identical_rate", "kept_mean", "mass_mean",
                                          "rank_mean")},
}
MAIN = ["mauve", "diversity", "rep_2", "coherence", "coherence_ll", "perplexity"]


@dataclass
class BaselineConfig:
    """``baseline`` in ``conf/analysis.yaml``: the row every other row is compared with."""

    method: str = "top_k"
    params: str = ""  # e.g. "top_k=20" or "alpha=0.5,top_k=10"; empty: top_k=10 if present


def with_parts(per_text: pd.DataFrame) -> pd.DataFrame:
    frame = per_text.copy()
    frame["texts"] = 1.0
    if "ll_sum" in frame:
        frame["scored"] = (frame["ll_tokens"] > 0).astype(float)
        frame["ll_mean"] = np.where(frame["ll_tokens"] > 0,
                                    frame["ll_sum"] / frame["ll_tokens"].clip(lower=1), 0.0)
    if "eos" in frame:
        frame["eos"] = frame["eos"].astype(float)
    return frame


def prompt_sums(texts: pd.DataFrame, prompts: np.ndarray,
                metrics: list[str]) -> dict[str, np.ndarray]:
    """Per metric, ``[prompts, parts]``: each prompt's sums over its texts (all its seeds), from
    one groupby; metrics whose parts the texts lack (humans: diagnostics) are left out."""
    columns = sorted({c for m in metrics for c in PARTS[m][0]})
    complete = texts[columns].notna().all()
    table = texts.groupby("prompt_id")[columns].sum().reindex(prompts)
    return {m: table[PARTS[m][0]].to_numpy(float) for m in metrics
            if complete[PARTS[m][0]].all()}


def select_baseline(rows: pd.DataFrame, cfg: BaselineConfig) -> int | None:
    """Index of the baseline among ``rows`` (one reference group, humans excluded)."""
    candidates = rows[rows["method"] == cfg.method]
    for pair in filter(None, cfg.params.split(",")):
        key, _, value = pair.partition("=")
        if key not in candidates:
            raise ValueError(f"baseline.params={cfg.params!r}: {cfg.method} rows have no "
                             f"parameter {key!r}.")
        candidates = candidates[np.isclose(candidates[key].astype(float), float(value))]
    if not cfg.params and "top_k" in candidates and (candidates["top_k"] == 10).any():
        candidates = candidates[candidates["top_k"] == 10]
    return None if candidates.empty else int(candidates.index[0])


def texts_of(job: Job, seeds: list[int], prompts: np.ndarray) -> list[dict]:
    wanted = set(prompts.tolist())
    return sorted((r for r in job.records if r["seed"] in seeds and r["prompt_id"] in wanted),
                  key=lambda r: (r["seed"], r["prompt_id"]))


def mauve_delta(method: Job, base: Job, prompts: np.ndarray, cfg: MauveConfig,
                flips: np.ndarray) -> tuple[float, float]:
    """The swap test on the seeds both configurations have."""
    seeds = sorted({r["seed"] for r in method.records} & {r["seed"] for r in base.records})
    a, b = texts_of(method, seeds, prompts), texts_of(base, seeds, prompts)
    if [(r["seed"], r["prompt_id"]) for r in a] != [(r["seed"], r["prompt_id"]) for r in b]:
        return math.nan, math.nan
    generator = method.config["model"]["source"]
    human = [r["reference"] for r in texts_of(base, seeds[:1], prompts)]
    index = {p: i for i, p in enumerate(prompts)}
    prompt_of_text = [index[r["prompt_id"]] for r in a]
    by_seed = [[r["continuation"] for r in rs if r["seed"] == s] for rs in (a, b) for s in seeds]

    def compute() -> np.ndarray:
        def features(texts: list[str]) -> np.ndarray:
            return featurize(texts, cfg.featurizer, cfg.max_tokens, generator)

        m = np.vstack([features(t) for t in by_seed[: len(seeds)]])
        bb = np.vstack([features(t) for t in by_seed[len(seeds) :]])
        return np.array(mauve_swap_test(features(human), bb, m, np.array(prompt_of_text), cfg,
                                        flips))

    key = [vars(cfg), generator, human, by_seed, prompt_of_text, flips.shape,
           hashlib.sha1(flips.tobytes()).hexdigest()]
    delta, p = disk_cached("mauve_swap", key, compute)
    return float(delta), float(p)


def add_uncertainty(summary: pd.DataFrame, per_text: pd.DataFrame, jobs: list[Job],
                    mauve_cfg: MauveConfig, cfg: BootstrapConfig, baseline: BaselineConfig,
                    keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """``summary`` with intervals, Δs and p-values; and the notes for under the table."""
    summary = summary.copy()
    frame = with_parts(per_text)
    metrics = [m for m, (cols, _) in PARTS.items() if m in summary and set(cols) <= set(frame)]
    by_job = {job.name: job for job in jobs}

    def key(row: pd.Series) -> tuple:
        return tuple("" if pd.isna(row.get(k)) else row.get(k) for k in keys)

    text_groups = {k: g for k, g in frame.groupby(frame.apply(key, axis=1), sort=False)}
    tests: list[tuple[int, str]] = []  # (summary index, metric) of every p-value, for Holm
    ses: dict[str, list[float]] = {m: [] for m in metrics}
    compared = sum(len(g) - 2 for _, g in summary.groupby(list(REFERENCE_KEYS))) or 1
    samples_test = max(cfg.samples, 20 * compared * (len(metrics) + ("mauve" in summary)))
    baselines, prompt_counts = [], []
    for _, rows in summary.groupby(list(REFERENCE_KEYS), sort=False):
        texts = {i: text_groups.get(key(row)) for i, row in rows.iterrows()}
        prompts = np.array(sorted(set.intersection(*[set(t["prompt_id"]) for t in
                                                    texts.values() if t is not None])))
        if prompts.size == 0:
            continue
        prompt_counts.append(len(prompts))
        counts = resample_counts(len(prompts), cfg.samples, cfg.seed)
        flips = sign_flips(len(prompts), samples_test, cfg.seed)
        sums = {i: prompt_sums(t, prompts, metrics) for i, t in texts.items() if t is not None}
        for i, by_metric in sums.items():
            for m in by_metric:
                _, low, high = bootstrap(by_metric[m], PARTS[m][1], counts, cfg.level)
                summary.loc[i, [f"{m}_lo", f"{m}_hi"]] = low, high
        runs = rows[rows["method"] != "human"]
        base = select_baseline(runs, baseline)
        if base is None or base not in sums:
            continue
        baselines.append(summary.loc[base, "method"] + " " + ", ".join(
            f"{p}={summary.loc[base, p]:g}" for p in keys[1:-3]
            if p in summary and pd.notna(summary.loc[base, p])))
        for i in runs.index:
            if i == base or i not in sums:
                continue
            for m in [m for m in metrics if m in sums[i] and m in sums[base]]:
                result = compare(sums[i][m], sums[base][m], PARTS[m][1], counts, flips,
                                 cfg.level)
                summary.loc[i, [f"delta_{m}", f"delta_{m}_lo", f"delta_{m}_hi", f"p_{m}"]] = (
                    result.delta, result.low, result.high, result.p)
                ses[m].append(result.se)
                tests.append((i, f"p_{m}"))
            if "mauve" in summary and pd.notna(summary.loc[i, "mauve"]):
                job, base_job = (by_job.get(texts[j]["job"].iloc[0]) for j in (i, base))
                if job is not None and base_job is not None:
                    try:
                        delta, p = mauve_delta(job, base_job, prompts, mauve_cfg, flips)
                    except (ValueError, RuntimeError) as error:
                        log.warning("Δ MAUVE of %s left blank: %s", job.name, error)
                        continue
                    summary.loc[i, ["delta_mauve", "p_mauve"]] = delta, p
                    tests.append((i, "p_mauve"))
    added = [c for c in summary if c.endswith(("_lo", "_hi", "_holm")) or c.startswith(
        ("delta_", "p_"))]
    summary[added] = summary[added].astype(float)
    if tests:
        adjusted = holm(np.array([summary.loc[i, c] for i, c in tests], dtype=float))
        for (i, column), value in zip(tests, adjusted, strict=True):
            summary.loc[i, f"{column}_holm"] = value
    notes = []
    if baselines:
        n = ", ".join(map(str, sorted(set(prompt_counts))))
        notes.append(
            f"Intervals: 95% percentile bootstrap over the {n} prompts ({cfg.samples} resamples, "
            f"seed {cfg.seed}; a prompt's seeds resampled together). Δ: against "
            f"{'; '.join(baselines)}, paired (same resampled prompts); p: paired sign-flip test "
            f"with {samples_test} resamples; * marks Holm-adjusted p < 0.05 over all "
            f"{len(tests)} tests of this table. MAUVE: mean ± std over k-means and generation "
            "seeds; its Δ is measured on one k-means codebook shared by human, baseline and "
            "row (so it is not the difference of two MAUVE cells) and tested by swapping the "
            "two rows' labels.")
        mde = {m: np.nanmedian([minimum_detectable_effect(se) for se in values])
               for m, values in ses.items() if values and m in MAIN}
        if mde:
            scale = {"diversity": 100}
            notes.append("Minimum detectable Δ at this n (80% power, two-sided 5%, 2.8 x the "
                         "median bootstrap SE of Δ): " + ", ".join(
                             f"{m} {v * scale.get(m, 1):.3g}" for m, v in mde.items())
                         + "; the SE shrinks as 1/√n.")
    return summary, notes
