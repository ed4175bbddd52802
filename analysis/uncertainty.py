"""Intervals for every cell of the summary and paired comparisons with a baseline row.

For each metric computed from per-text sufficient statistics (``per_text.csv``) the summary
gets ``<metric>_lo``/``_hi`` (a percentile bootstrap over prompts, at ``bootstrap.level``) and,
for every configuration but the baseline, ``delta_<metric>`` with its paired-bootstrap interval
and a paired sign-flip p-value ``p_<metric>``, Holm-adjusted over the table's outcome metrics
(``OUTCOMES``) in ``p_<metric>_holm``; the descriptive metrics' p-values stay unadjusted.

A row's cell and interval use all its texts (every seed). A Δ, its interval and its p compare
two rows on the (prompt, seed) pairs **both** have (``compare_rows``): a 1-seed row against a
3-seed baseline is compared with the baseline's texts of that one seed, so the sign-flip swaps
equal-sized blocks and holds its level. Where both rows have the same pairs, Δ is exactly the
difference of their cells; where not, ``delta_subset`` is 1 (a ``†`` in the table).

MAUVE keeps its mean ± std over k-means and generation seeds (bootstrap replicates of MAUVE
are biased, and their percentile intervals under-cover), and its Δ is tested by swapping the two
configurations' k-means labels on one shared codebook. Corpus ``distinct_n`` gets no interval:
duplicated texts in a bootstrap resample bias it down.

At a study's size (10^5 texts, B = 10^4) the cost is in the products of the resample matrices
with per-prompt sums: ``Products`` draws each matrix once per prompt count and multiplies it
with every row's sums side by side (each distinct sums matrix once: the baseline's, shared by
its comparisons, included), so a table is one product per prompt count and kind.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis import features
from analysis.features import disk_cached, featurize
from analysis.load import Job
from analysis.mauve import MauveConfig, mauve_swap_test
from analysis.stats import (
    BootstrapConfig,
    Comparison,
    compare,
    compared,
    count_blocks,
    flip_blocks,
    holm,
    interval,
    minimum_detectable_effect,
    ratio,
    resample_counts,
    resampled,
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
# The Holm family: what the study compares configurations on. The rest (length, EOS rate, the
# selectors' own diagnostics) describe how a configuration behaves; their p-values are printed
# unadjusted and never starred, so they do not make every outcome's test more conservative.
OUTCOMES = ["mauve", "diversity", "rep_2", "rep_3", "rep_4", "coherence", "coherence_ll",
            "perplexity"]
DESCRIPTIVE = [m for m in PARTS if m not in OUTCOMES]
# Δ MAUVE is no difference of two MAUVE cells: every table shows it under this name.
DELTA_MAUVE = "Δ MAUVE (paired, shared codebook)"


def delta_label(metric: str, header: str) -> str:
    """The header of ``metric``'s Δ column (``header``: the metric's own)."""
    return DELTA_MAUVE if metric == "mauve" else f"Δ {header}"


@dataclass
class BaselineConfig:
    """``baseline`` in ``conf/analysis.yaml``: the row every other row is compared with, e.g.
    ``baseline.method=top_p baseline.params.top_p=0.95``."""

    method: str = "top_k"
    params: dict[str, Any] = field(default_factory=dict)  # {} for top_k: top_k=10


DEFAULT_PARAMS = {"top_k": {"top_k": 10}}  # the baseline's parameters when none are given


class BaselineNotFound(ValueError):
    """The baseline the command names is no row of the table."""


class AmbiguousBaseline(ValueError):
    """The baseline the command names is more than one row of one reference group."""


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


# ---- pairwise comparisons on common (prompt, seed) pairs ------------------------------------

PART_COLUMNS = sorted({c for columns, _ in PARTS.values() for c in columns})
COLUMN = {c: i for i, c in enumerate(PART_COLUMNS)}


@dataclass
class Texts:
    """One row's texts as arrays: each text's prompt and seed (-1: a human reference) and its
    parts (columns ``PART_COLUMNS``; NaN where the text has none)."""

    prompt: np.ndarray
    seed: np.ndarray
    parts: np.ndarray

    @classmethod
    def of(cls, per_text: pd.DataFrame) -> Texts:
        """From rows of ``per_text.csv`` (one configuration's)."""
        frame = with_parts(per_text)
        return cls(frame["prompt_id"].to_numpy(np.int64),
                   frame["seed"].fillna(-1).to_numpy(np.int64),
                   frame.reindex(columns=PART_COLUMNS).to_numpy(float))

    def __len__(self) -> int:
        return len(self.prompt)

    @property
    def metrics(self) -> list[str]:
        """The metrics of ``PARTS`` every one of these texts has all parts of."""
        complete = ~np.isnan(self.parts).any(0)
        return [m for m, (columns, _) in PARTS.items()
                if all(complete[COLUMN[c]] for c in columns)]

    def by_prompt(self, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The prompts (sorted) and ``[prompts, parts]``: each prompt's sums over its texts
        (those ``keep`` marks, default all)."""
        prompt, parts = (self.prompt, self.parts) if keep is None else (self.prompt[keep],
                                                                         self.parts[keep])
        prompts, inverse = np.unique(prompt, return_inverse=True)
        sums = np.zeros((len(prompts), parts.shape[1]))
        np.add.at(sums, inverse, parts)
        return prompts, sums


def pair_ids(a: Texts, b: Texts) -> tuple[np.ndarray, np.ndarray]:
    """One int per (prompt, seed) of ``a`` and of ``b``, equal where the pair is: the pairs'
    ranks among both rows' pairs (exact for any seed and prompt id)."""
    pairs = np.concatenate([np.stack([a.prompt, a.seed], 1), np.stack([b.prompt, b.seed], 1)])
    _, ids = np.unique(pairs, axis=0, return_inverse=True)
    ids = ids.ravel()
    return ids[: len(a)], ids[len(a) :]


def common_sums(a: Texts, b: Texts) -> tuple[np.ndarray, np.ndarray, int]:
    """Per prompt, the sums of ``a``'s and of ``b``'s parts over the (prompt, seed) pairs both
    have (rows: the prompts with at least one such pair, sorted), and the number of pairs."""
    _, in_a, in_b = np.intersect1d(*pair_ids(a, b), assume_unique=True, return_indices=True)
    keep_a, keep_b = np.zeros(len(a), bool), np.zeros(len(b), bool)
    keep_a[in_a], keep_b[in_b] = True, True
    return a.by_prompt(keep_a)[1], b.by_prompt(keep_b)[1], len(in_a)


@dataclass
class Resamples:
    """The bootstrap counts ``[samples, prompts]`` and sign flips ``[samples_test, prompts]``
    every comparison over ``prompts`` prompts shares (so comparisons are paired with each
    other too). Each matrix is made whole only for a caller that asks for it (``counts``,
    ``flips``: MAUVE's swap test); ``times`` draws it block by block into a product."""

    prompts: int
    cfg: BootstrapConfig
    samples_test: int

    @classmethod
    def of(cls, prompts: int, cfg: BootstrapConfig, samples_test: int) -> Resamples:
        return cls(prompts, cfg, samples_test)

    @functools.cached_property
    def counts(self) -> np.ndarray:
        return resample_counts(self.prompts, self.cfg.samples, self.cfg.seed)

    @functools.cached_property
    def flips(self) -> np.ndarray:
        return sign_flips(self.prompts, self.samples_test, self.cfg.seed)

    def times(self, kind: str, parts: np.ndarray) -> np.ndarray:
        """``counts @ parts`` or ``flips @ parts`` (``kind``), float64 ``[samples, k]``."""
        if kind in vars(self):  # already whole
            return resampled(vars(self)[kind], parts)
        if kind == "counts":
            return resampled(count_blocks(self.prompts, self.cfg.samples, self.cfg.seed), parts)
        return resampled(flip_blocks(self.prompts, self.samples_test, self.cfg.seed), parts)


def parts_of(sums: np.ndarray, metric: str) -> np.ndarray:
    return sums[..., [COLUMN[c] for c in PARTS[metric][0]]]


def compare_sums(a: np.ndarray, b: np.ndarray, metric: str, resamples: Resamples,
                 level: float) -> Comparison:
    return compare(parts_of(a, metric), parts_of(b, metric), PARTS[metric][1],
                   resamples.counts, resamples.flips, level)


def compare_rows(a: pd.DataFrame, b: pd.DataFrame, metric: str, cfg: BootstrapConfig,
                 samples_test: int | None = None) -> Comparison:
    """Δ ``metric`` = row ``a`` - row ``b`` on the (prompt, seed) pairs both have: the paired
    bootstrap interval at ``cfg.level`` and SE of Δ over prompts (``cfg.samples`` resamples),
    and the paired sign-flip p over ``samples_test`` (default ``cfg.samples``) random halves of
    the prompts. ``a`` and ``b`` are two configurations' rows of ``per_text.csv``
    (``prompt_id``, ``seed`` and the per-text parts ``PARTS[metric]`` is made of). Identical
    texts give Δ = 0 and p = 1 exactly. ``Comparison.pairs`` and ``.prompts`` say how many
    pairs and prompts Δ is over; no common pair raises ValueError."""
    sums_a, sums_b, pairs = common_sums(Texts.of(a), Texts.of(b))
    if not pairs:
        raise ValueError("the two rows have no (prompt, seed) pair in common: nothing to pair")
    resamples = Resamples.of(len(sums_a), cfg, samples_test or cfg.samples)
    return dataclasses.replace(compare_sums(sums_a, sums_b, metric, resamples, cfg.level),
                               pairs=pairs, prompts=len(sums_a))


# ---- the baseline --------------------------------------------------------------------------

def baseline_params(cfg: BaselineConfig) -> dict[str, Any]:
    return dict(cfg.params) or DEFAULT_PARAMS.get(cfg.method, {})


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, numbers.Real) else str(value)


def describe(row: pd.Series, parameters: list[str]) -> str:
    """``method p=v, ...`` of a summary row."""
    values = [f"{p}={_value(row[p])}" for p in parameters if p in row and pd.notna(row[p])]
    return " ".join([row["method"], ", ".join(values)]).strip()


def matching(rows: pd.DataFrame, cfg: BaselineConfig) -> pd.DataFrame:
    """The rows of ``rows`` that ``cfg`` names."""
    candidates = rows[rows["method"] == cfg.method]
    for key, value in baseline_params(cfg).items():
        if key not in candidates or candidates[key].isna().all():
            return candidates.iloc[:0]
        column = candidates[key]
        if isinstance(value, numbers.Real) and pd.api.types.is_numeric_dtype(column):
            candidates = candidates[np.isclose(column.astype(float), float(value))]
        else:
            candidates = candidates[column.astype(str) == str(value)]
    return candidates


def baseline_command(row: pd.Series, parameters: list[str]) -> str:
    return " ".join([f"baseline.method={row['method']}",
                     *[f"baseline.params.{p}={_value(row[p])}"
                       for p in parameters if p in row and pd.notna(row[p])]])


def check_baseline(runs: pd.DataFrame, cfg: BaselineConfig,
                   parameters: list[str]) -> str | None:
    """Given the configurations of the table (one row each: method, parameters and reference
    group), raise ``BaselineNotFound`` (listing the rows that could be) where the baseline the
    command names is none of them, and ``AmbiguousBaseline`` where it is more than one row of
    one reference group; the note to print where the default one is absent; None where it is
    there."""
    for _, group in runs.groupby("references", sort=False) if "references" in runs else []:
        baseline_row(group, cfg, parameters)
    if not matching(runs, cfg).empty:
        return None
    named = baseline_name(cfg)
    options = "; ".join(dict.fromkeys(baseline_command(row, parameters)
                                      for _, row in runs.iterrows()))
    if cfg != BaselineConfig():
        raise BaselineNotFound(f"{named}: no row of the table is that configuration; the rows "
                               f"that can be the baseline: {options}.")
    return (f"No Δ columns: the default baseline ({named}) is not in this sweep; choose one of "
            f"the rows with {options}.")


def baseline_name(cfg: BaselineConfig) -> str:
    return " ".join([f"baseline.method={cfg.method}",
                     *[f"baseline.params.{k}={v}" for k, v in baseline_params(cfg).items()]])


def baseline_row(rows: pd.DataFrame, cfg: BaselineConfig, parameters: list[str]) -> int | None:
    """The index of the one row of ``rows`` (one reference group's configurations) that ``cfg``
    names; None where none is; ``AmbiguousBaseline``, listing the matches and how to name
    each, where several are."""
    found = matching(rows, cfg)
    if len(found) <= 1:
        return None if found.empty else int(found.index[0])
    commands = [baseline_command(row, parameters) for _, row in found.iterrows()]
    if len(set(commands)) < len(commands):  # they differ in no selector parameter
        commands = [f"{c} baseline.params.config={row['config']}"
                    for c, (_, row) in zip(commands, found.iterrows(), strict=True)]
    raise AmbiguousBaseline(
        f"{baseline_name(cfg)} names {len(found)} rows of one reference group: "
        f"{'; '.join(commands)}. Name one of them fully (one of these overrides).")


# ---- the table -----------------------------------------------------------------------------

def planned_tests(summary: pd.DataFrame, metrics: list[str]) -> int:
    """How many p-values the Holm family of a table of ``summary`` has at most (for B >= 20 x
    tests)."""
    compared_rows = sum(len(g) - 2 for _, g in summary.groupby("references")) or 1
    family = [m for m in OUTCOMES if m in metrics or (m == "mauve" and "mauve" in summary)]
    return compared_rows * len(family)


@dataclass
class Cell:
    """A cell's interval to compute: row ``row``'s per-prompt sums over all its texts."""

    row: int
    metrics: list[str]
    sums: np.ndarray


@dataclass
class Paired:
    """A Δ to compute: row ``row`` against the baseline on the (prompt, seed) pairs both have
    (``sums``, ``base``: per-prompt sums over those pairs); ``subset``: either row has texts
    outside them."""

    row: int
    metrics: list[str]
    sums: np.ndarray
    base: np.ndarray
    subset: bool


class Products:
    """The bootstrap sums (``counts @ sums``) and sign-flip moves (``flips @ (base - sums)``) of
    every interval and test of a table: per prompt count, one product of its resample matrix
    with every distinct sums matrix the table needs side by side (the baseline's, which every
    comparison of its group shares, once), and one of its sign flips with every difference."""

    def __init__(self, wanted: list[Cell | Paired], resamples: Callable[[int], Resamples]):
        stacks: dict[tuple[str, int], dict[bytes, np.ndarray]] = {}
        for item in wanted:
            needed = [("counts", item.sums)]
            if isinstance(item, Paired):
                needed += [("counts", item.base), ("flips", item.base - item.sums)]
            for kind, sums in needed:
                stacks.setdefault((kind, len(sums)), {})[self.key(sums)] = sums
        self.done: dict[tuple[str, bytes], np.ndarray] = {}
        for (kind, prompts), matrices in stacks.items():
            stacked = np.nan_to_num(np.hstack(list(matrices.values())))  # NaN: a part unused
            product = resamples(prompts).times(kind, stacked)
            width = len(PART_COLUMNS)  # every sums matrix has one column per part
            for k, key in enumerate(matrices):
                self.done[kind, key] = product[:, k * width : (k + 1) * width]

    @staticmethod
    def key(sums: np.ndarray) -> bytes:
        return hashlib.sha1(np.ascontiguousarray(sums).tobytes()).digest() + bytes(
            str(sums.shape), "ascii")

    def __call__(self, kind: str, sums: np.ndarray) -> np.ndarray:
        """``[samples, parts]``: the resample matrix ``kind`` times ``sums``."""
        return self.done[kind, self.key(sums)]


def cell_columns(item: Cell, products: Products, level: float) -> dict[str, float]:
    """``<m>_lo``/``_hi`` of a cell."""
    replicated = products("counts", item.sums)
    out = {}
    for m in item.metrics:
        out[f"{m}_lo"], out[f"{m}_hi"] = interval(PARTS[m][1](parts_of(replicated, m)), level)
    return out


def paired_columns(item: Paired, products: Products, level: float) -> dict[str, float]:
    """``delta_<m>``, its interval, ``p_<m>`` and ``se_<m>`` of a comparison, and
    ``delta_subset``."""
    out = {"delta_subset": float(item.subset)}
    totals, base_totals = item.sums.sum(0), item.base.sum(0)
    replicated, base_replicated = products("counts", item.sums), products("counts", item.base)
    swapped = products("flips", item.base - item.sums)
    for m in item.metrics:
        r = compared(PARTS[m][1], *(parts_of(x, m) for x in (
            totals, base_totals, replicated, base_replicated, swapped)), level)
        out.update({f"delta_{m}": r.delta, f"delta_{m}_lo": r.low, f"delta_{m}_hi": r.high,
                    f"p_{m}": r.p, f"se_{m}": r.se})
    return out


def cell_intervals(summary: pd.DataFrame, texts: dict[str, Texts]) -> list[Cell]:
    """The intervals of every row over all its texts (a prompt's seeds resampled together)."""
    return [Cell(i, row_texts.metrics, row_texts.by_prompt()[1])
            for i, config in summary["config"].items()
            if (row_texts := texts.get(config)) is not None]


def pairwise_tests(summary: pd.DataFrame, texts: dict[str, Texts], base: int,
                   rows: pd.Index) -> list[Paired]:
    """Every row of ``rows`` against row ``base`` on their common (prompt, seed) pairs (those
    with any)."""
    out = []
    base_texts = texts[summary.loc[base, "config"]]
    base_metrics = set(base_texts.metrics)
    for i in rows:
        mine = texts.get(summary.loc[i, "config"])
        if i == base or mine is None:
            continue
        sums_a, sums_b, pairs = common_sums(mine, base_texts)
        if pairs:
            out.append(Paired(i, [m for m in mine.metrics if m in base_metrics], sums_a, sums_b,
                            pairs < max(len(mine), len(base_texts))))
    return out


def holm_over_table(summary: pd.DataFrame) -> pd.DataFrame:
    """``p_<m>_holm``: every ``p_<m>`` of the table's outcome metrics (``OUTCOMES``) adjusted
    together (Holm, family-wise); the descriptive metrics' p-values stay unadjusted."""
    columns = [f"p_{m}" for m in OUTCOMES if f"p_{m}" in summary]
    if not columns:
        return summary
    values = summary[columns].to_numpy(float)
    adjusted = holm(values.ravel()).reshape(values.shape)
    return summary.assign(**{f"{c}_holm": adjusted[:, j] for j, c in enumerate(columns)})


def texts_of(job: Job, seeds: list[int], prompts: np.ndarray) -> list[dict]:
    wanted = set(prompts.tolist())
    return sorted((r for r in job.records if r["seed"] in seeds and r["prompt_id"] in wanted),
                  key=lambda r: (r["seed"], r["prompt_id"]))


def mauve_delta(method: Job, base: Job, prompts: np.ndarray, cfg: MauveConfig,
                flips: np.ndarray) -> tuple[float, float]:
    """The swap test on the seeds both configurations have."""
    seeds = sorted({r["seed"] for r in method.records} & {r["seed"] for r in base.records})
    a, b = texts_of(method, seeds, prompts), texts_of(base, seeds, prompts)
    if not seeds or [(r["seed"], r["prompt_id"]) for r in a] != [
            (r["seed"], r["prompt_id"]) for r in b]:
        return math.nan, math.nan
    generator = method.config["model"]["source"]
    human = [r["reference"] for r in texts_of(base, seeds[:1], prompts)]
    index = {p: i for i, p in enumerate(prompts)}
    prompt_of_text = [index[r["prompt_id"]] for r in a]
    by_seed = [[r["continuation"] for r in rs if r["seed"] == s] for rs in (a, b) for s in seeds]

    def compute() -> np.ndarray:
        def embed(texts: list[str]) -> np.ndarray:
            return featurize(texts, cfg.featurizer, cfg.max_tokens, generator)

        m = np.vstack([embed(t) for t in by_seed[: len(seeds)]])
        bb = np.vstack([embed(t) for t in by_seed[len(seeds) :]])
        return np.array(mauve_swap_test(embed(human), bb, m, np.array(prompt_of_text), cfg,
                                        flips))

    key = [features.VERSION, vars(cfg), generator, human, by_seed, prompt_of_text, flips.shape,
           hashlib.sha1(flips.tobytes()).hexdigest()]
    delta, p = disk_cached("mauve_swap", key, compute)
    return float(delta), float(p)


def mauve_tests(summary: pd.DataFrame, jobs: dict[str, Job], base: int, rows: pd.Index,
                prompts: np.ndarray, cfg: MauveConfig, flips: np.ndarray) -> pd.DataFrame:
    """``delta_mauve`` and ``p_mauve`` of every row of ``rows`` with a MAUVE, against ``base``."""
    out = pd.DataFrame(index=rows)
    base_job = jobs.get(summary.loc[base, "config"])
    for i in rows:
        job = jobs.get(summary.loc[i, "config"])
        if i == base or job is None or base_job is None or pd.isna(summary.loc[i, "mauve"]):
            continue
        try:
            out.loc[i, ["delta_mauve", "p_mauve"]] = mauve_delta(job, base_job, prompts, cfg,
                                                                 flips)
        except (ValueError, RuntimeError) as error:
            log.warning("Δ MAUVE of %s left blank: %s", job.name, error)
    return out


def add_uncertainty(summary: pd.DataFrame, per_text: pd.DataFrame, jobs: list[Job],
                    mauve_cfg: MauveConfig, cfg: BootstrapConfig, baseline: BaselineConfig,
                    parameters: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """``summary`` with intervals, Δs and p-values (``parameters``: its selector parameter
    columns); and the notes for under the table. Reference groups without the baseline get
    no Δ (``check_baseline`` says so before the work)."""
    texts = {config: Texts.of(rows) for config, rows in per_text.groupby("config", sort=False)
             } if len(per_text) else {}
    metrics = [m for m in PARTS if m in summary and set(PARTS[m][0]) <= set(with_parts(
        per_text.iloc[:1]))]
    samples_test = max(cfg.samples, 20 * planned_tests(summary, metrics))
    # one set of resamples per number of prompts, shared by every interval and test (and
    # drawn once: at 2,500 prompts and B = 10,000 each matrix is 100 MB)
    resamples = functools.cache(lambda prompts: Resamples.of(prompts, cfg, samples_test))
    wanted: list[Cell | Paired] = cell_intervals(summary, texts)
    by_config = {job.config_id: job for job in jobs}
    baselines: list[str] = []
    without: list[str] = []  # rows of reference groups that lack the baseline
    mauve_parts = []
    for _, rows in summary.groupby("references", sort=False):
        runs = rows[rows["method"] != "human"]
        base = baseline_row(runs, baseline, parameters)
        if base is None:
            without += [describe(row, [*parameters, *settings_of(summary)])
                        for _, row in runs.iterrows()]
            continue
        if summary.loc[base, "config"] not in texts:
            continue
        baselines.append(describe(summary.loc[base], parameters))
        wanted += pairwise_tests(summary, texts, base, runs.index)
        if "mauve" in summary:
            prompts = np.unique(texts[summary.loc[base, "config"]].prompt)
            mauve_parts.append(mauve_tests(summary, by_config, base, runs.index, prompts,
                                           mauve_cfg, resamples(len(prompts)).flips))
    products = Products(wanted, resamples)
    columns: dict[int, dict[str, float]] = {}
    for item in wanted:
        columns.setdefault(item.row, {}).update(
            cell_columns(item, products, cfg.level) if isinstance(item, Cell)
            else paired_columns(item, products, cfg.level))
    added = pd.DataFrame.from_dict(columns, orient="index")
    for part in mauve_parts:  # each covers some rows (one reference group)
        added = added.combine_first(part.astype(float))
    summary = holm_over_table(pd.concat([summary, added.reindex(summary.index)], axis=1))
    prompt_counts = sorted({len(np.unique(t.prompt)) for t in texts.values()})
    notes = uncertainty_notes(summary, cfg, baselines, prompt_counts, samples_test)
    if without and baselines:  # (no baseline anywhere: check_baseline's note says so)
        notes.append(f"No Δ for {len(without)} rows whose references (prompt length, dataset, "
                     f"model, new tokens) no baseline row shares: {'; '.join(without)}. Run the "
                     "baseline with their settings to compare them.")
    return summary, notes


DETECTABLE = "Minimum detectable Δ at this n"


def minimum_detectable(summary: pd.DataFrame, metric: str) -> float:
    """The Δ ``metric`` the table detects with 80% power in a two-sided 5% test: 2.8 x the
    median bootstrap SE of Δ (``se_<metric>``) over the rows compared with a baseline. Rows
    whose texts equal the baseline's (SE 0) carry no information and are left out; NaN (not
    estimable) where no row is left."""
    column = f"se_{metric}"
    ses = summary[column].dropna() if column in summary else pd.Series(dtype=float)
    ses = ses[ses > 0]
    return minimum_detectable_effect(float(np.median(ses))) if len(ses) else math.nan


def detectable(summary: pd.DataFrame, metric: str, scale: float = 1) -> str:
    """``minimum_detectable`` in the table's units (x ``scale``), or "not estimable"."""
    value = minimum_detectable(summary, metric)
    return f"{value * scale:.3g}" if np.isfinite(value) else "not estimable"


def settings_of(summary: pd.DataFrame) -> list[str]:
    """The settings columns of the table (``table.settings``: dotted keys where rows differ)."""
    return [c for c in summary if "." in c]


def uncertainty_notes(summary: pd.DataFrame, cfg: BootstrapConfig, baselines: list[str],
                      prompt_counts: list[int], samples_test: int) -> list[str]:
    """What the intervals, Δs, p-values and marks of the table are, in words."""
    level = f"{100 * cfg.level:g}%"
    n = ", ".join(map(str, prompt_counts))
    tests = int(summary[[c for c in summary if c.endswith("_holm")]].notna().sum().sum())
    notes = [f"A cell is its statistic over all the row's texts (every seed pooled: the sums of "
             f"per-text counts, then the ratio), which is what its interval and Δ are about. "
             f"Intervals: {level} percentile bootstrap over the {n} prompts ({cfg.samples} "
             f"resamples, seed {cfg.seed}; a prompt's seeds resampled together)."]
    if baselines:
        notes.append(
            f"Δ: against {'; '.join(baselines)}, on the (prompt, seed) pairs both rows have, "
            f"paired (same resampled prompts), {level} interval; p: paired sign-flip test "
            f"with {samples_test} resamples; * marks Holm-adjusted p < 0.05 over all {tests} "
            "tests of the outcome metrics of this table. MAUVE: mean ± std over k-means and "
            f"generation seeds; {DELTA_MAUVE} is measured on one k-means codebook shared by "
            "human, baseline and row (so it is not the difference of two MAUVE cells) and "
            "tested by swapping the two rows' labels.")
        if "delta_subset" in summary and (summary["delta_subset"] == 1).any():
            notes.append("† Δ is on fewer texts than the cells: the row and the baseline have "
                         "different seeds (greedy runs seed 0 only), so Δ compares them on the "
                         "(prompt, seed) pairs both have and is not the difference of the two "
                         "cells, which keep all their own seeds.")
        mde = {m: detectable(summary, m, {"diversity": 100}.get(m, 1)) for m in MAIN
               if f"se_{m}" in summary}
        if mde:
            notes.append(f"{DETECTABLE} (80% power, two-sided 5%, 2.8 x the median bootstrap "
                         "SE of Δ over the rows not identical to the baseline): " + ", ".join(
                             f"{m} {v}" for m, v in mde.items())
                         + "; the SE shrinks as 1/√n.")
        described = [m for m in DESCRIPTIVE if f"p_{m}" in summary]
        if described:
            notes.append(f"Holm's family is the outcome metrics ({', '.join(OUTCOMES)}): "
                         f"{', '.join(described)} describe how a configuration generates; "
                         "their p-values (summary.csv) are unadjusted and never starred.")
    return notes
