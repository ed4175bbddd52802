"""Per-seed metrics of every configuration and the summary table: one row per configuration
(``harness.identity``: everything its records are a function of), one human row per reference
group. Its renderings are in ``analysis.render``."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import features
from analysis.coherence import (
    CoherenceConfig,
    embedding_coherence,
    likelihood_metrics,
    token_log_likelihoods,
)
from analysis.diversity import NGRAM_COLUMNS, ngram_statistics
from analysis.features import disk_cached, featurize
from analysis.load import Job, reference_groups, reference_keys
from analysis.mauve import MauveConfig, mauve_scores
from analysis.uncertainty import PARTS, with_parts
from harness import identity

log = logging.getLogger(__name__)

READABLE = {"model.name": "model", "dataset.name": "dataset",
            "generation.max_new_tokens": "max_new_tokens"}  # settings shown under a short name
DIAGNOSTICS = ["topk_identical_rate", "kept_mean", "mass_mean", "rank_mean"]
METRICS = ["mauve", "diversity", "rep_2", "rep_3", "rep_4", "distinct_1", "distinct_2",
           "distinct_3", "distinct_4", "coherence", "coherence_ll", "perplexity", "mean_tokens",
           "eos_rate", "topk_identical_rate", "kept_mean", "mass_mean", "rank_mean"]


@dataclass
class DiversityConfig:
    skip_last_ngram: bool = False  # True: SimCTG's script, for comparison with published tables


@dataclass
class MetricsConfig:
    """``metrics`` in ``conf/analysis.yaml``."""

    mauve: MauveConfig = field(default_factory=MauveConfig)
    coherence: CoherenceConfig = field(default_factory=CoherenceConfig)
    diversity: DiversityConfig = field(default_factory=DiversityConfig)


def text_metrics(prompts: list[str], texts: list[str], references: list[str],
                 cfg: MetricsConfig, generator: str | None, label: str,
                 per_text: dict | None = None) -> dict:
    """Every metric of one set of texts; MAUVE against the references of the same prompts.
    A metric family that fails (a featurizer that cannot load, too few samples for k-means)
    is logged under ``label`` and left blank; the others are still computed. ``per_text``, if
    given, receives each text's sufficient statistics (columns of ``per_text.csv``)."""
    per_text = {} if per_text is None else per_text
    counts, diversity = ngram_statistics(texts, cfg.diversity.skip_last_ngram)
    per_text.update({name: counts[:, i] for i, name in enumerate(NGRAM_COLUMNS)})
    row: dict = {"n": len(texts), **diversity}
    if not any(t.strip() for t in texts):
        log.warning("%s: all %d texts are empty; MAUVE and coherence left blank", label,
                    len(texts))
        return row

    def coherence() -> dict:
        similarity = embedding_coherence(prompts, texts, cfg.coherence, generator)
        per_text["coherence"] = similarity
        return {"coherence": float(np.mean(similarity))}

    def likelihood() -> dict:
        log_likelihoods = token_log_likelihoods(prompts, texts, cfg.coherence)
        per_text["ll_sum"], per_text["ll_tokens"] = log_likelihoods.T
        return likelihood_metrics(log_likelihoods)

    def mauve() -> dict:
        m = cfg.mauve
        p = featurize(references, m.featurizer, m.max_tokens, generator)
        q = featurize(texts, m.featurizer, m.max_tokens, generator)
        source = generator if m.featurizer == "generator" else None  # the features' model
        scores = disk_cached("mauve", [features.VERSION, vars(m), source, references, texts],
                             lambda: mauve_scores(p, q, m))
        return {"mauve": float(np.mean(scores)), "mauve_values": list(scores)}

    families = {"coherence": coherence, "coherence_ll and perplexity": likelihood}
    if texts is not references:
        families["MAUVE"] = mauve
    for name, compute in families.items():
        try:
            row.update(compute())
        except (ValueError, RuntimeError, OSError) as error:
            log.warning("%s: %s left blank: %s", label, name, error)
    return row


def configuration(job: Job) -> dict:
    """The columns that identify a job's rows: method and its parameters (whatever its selector
    config holds), its configuration and reference group, readable names, dirs."""
    selector = dict(job.config["selector"])
    return {"method": selector.pop("method"), **selector, **reference_keys(job.config),
            "config": job.config_id, "references": job.references_id, "job": job.name}


def per_text_rows(base: dict, records: list[dict], seed: int | None,
                  stats: dict) -> pd.DataFrame:
    """Rows of ``per_text.csv``: one per text with its configuration, prompt, seed and
    sufficient statistics (built column by column: a study has 10^5 texts)."""
    columns = {**base, "prompt_id": [r["prompt_id"] for r in records],
               "seed": math.nan if seed is None else seed,
               **{name: np.asarray(values, float) for name, values in stats.items()}}
    if seed is not None:  # a generation (not a human reference)
        columns.update(num_tokens=[r["num_tokens"] for r in records],
                       eos=[r["finish_reason"] == "eos" for r in records],
                       **{key: [r.get(key, math.nan) for r in records] for key in DIAGNOSTICS
                          if any(key in r for r in records)})
    return pd.DataFrame(columns, index=range(len(records)))


def job_rows(job: Job, cfg: MetricsConfig) -> tuple[list[dict], list[pd.DataFrame]]:
    """One row per generation seed of ``job`` (``per_seed.csv``), and one per text
    (``per_text.csv``)."""
    base = configuration(job)
    generator = job.config["model"]["source"]
    rows, texts = [], []
    for seed in sorted({r["seed"] for r in job.records}):
        records = sorted((r for r in job.records if r["seed"] == seed),
                         key=lambda r: r["prompt_id"])
        row, stats = {**base, "seed": seed}, {}
        row.update(text_metrics([r["prompt"] for r in records],
                                [r["continuation"] for r in records],
                                [r["reference"] for r in records], cfg, generator,
                                f"job {job.name}, seed {seed}", stats))
        texts.append(per_text_rows(base, records, seed, stats))
        row["mean_tokens"] = float(np.mean([r["num_tokens"] for r in records]))
        row["eos_rate"] = float(np.mean([r["finish_reason"] == "eos" for r in records]))
        for key in DIAGNOSTICS:
            values = [r[key] for r in records if key in r]
            row[key] = float(np.mean(values)) if values else math.nan
        rows.append(row)
    return rows, texts


def human_rows(jobs: list[Job], cfg: MetricsConfig) -> tuple[list[dict], list[pd.DataFrame]]:
    """The references themselves, one row per reference group, over the prompts the group's
    jobs are compared on; and one row per reference text."""
    rows, texts = [], []
    for references_id, group in reference_groups(jobs).items():
        by_prompt = {r["prompt_id"]: r for job in group for r in job.records}
        records = [by_prompt[i] for i in sorted(by_prompt)]
        references = [r["reference"] for r in records]
        base = {"method": "human", **reference_keys(group[0].config),
                "config": f"human:{references_id}", "references": references_id}
        row, stats = dict(base), {}
        row.update(text_metrics([r["prompt"] for r in records], references, references, cfg,
                                group[0].config["model"]["source"], "human references", stats))
        row["mean_tokens"] = float(row["max_new_tokens"])  # references have exactly this many
        texts.append(per_text_rows(base, records, None, stats))
        rows.append(row)
    return rows, texts


def flat(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


def settings(jobs: list[Job]) -> pd.DataFrame:
    """Per configuration (index: config id, and ``human:<references>``), the settings other
    than the selector's in which the jobs differ: the columns that tell apart two rows of one
    method and parameters (prompt length, data file, dtype, ...). A human row shows the values
    all jobs of its group share."""
    flats = {job.config_id: flat(json.loads(identity.configuration(job.config))) for job in jobs}
    keys = sorted({k for f in flats.values() for k in f if not k.startswith("selector.")})
    varying = [k for k in keys if len({json.dumps(f.get(k)) for f in flats.values()}) > 1]
    frame = pd.DataFrame(flats).T.reindex(columns=varying)
    humans = {}
    for references_id, group in reference_groups(jobs).items():
        shared = frame.loc[[job.config_id for job in group]]
        humans[f"human:{references_id}"] = {
            c: shared[c].iloc[0] for c in varying if shared[c].astype(str).nunique() == 1}
    humans = pd.DataFrame.from_dict(humans, orient="index").reindex(index=list(humans),
                                                                     columns=varying)
    return pd.concat([frame, humans]).rename(columns=READABLE)


def parameters(jobs: list[Job]) -> list[str]:
    """Every parameter any job's selector config holds, in the order the configs list them."""
    return list(dict.fromkeys(k for job in jobs for k in job.config["selector"] if k != "method"))


def per_text_frame(texts: list[pd.DataFrame]) -> pd.DataFrame:
    """``per_text.csv`` from ``job_rows``' and ``human_rows``' pieces."""
    return pd.concat(texts, ignore_index=True) if texts else pd.DataFrame()


def pooled(per_text: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, each metric of ``PARTS`` over all its texts (every seed): the
    statistic of the summed parts, which is what the intervals and Δs are about. Left out
    (NaN) where a text lacks a part."""
    frame = with_parts(per_text)
    out = {}
    for metric, (columns, stat) in PARTS.items():
        if set(columns) <= set(frame):
            groups = frame.groupby("config", sort=False)[columns]
            totals = groups.sum()
            values = stat(totals.to_numpy(float))
            out[metric] = pd.Series(values, totals.index).where(groups.count().min(1)
                                                                 == groups.size())
    return pd.DataFrame(out)


def summarize(per_seed: pd.DataFrame, per_text: pd.DataFrame, jobs: list[Job]) -> pd.DataFrame:
    """One row per configuration. A cell is its statistic over all the configuration's texts
    (all seeds pooled: Σ parts over texts, then the statistic), the statistic its interval and
    Δ are about; MAUVE and distinct-n, which are not functions of per-text sums, are means over
    seeds, and ``mauve_std`` is the std of every MAUVE value (each generation seed x each
    k-means seed). ``mauve_n`` is the fewest texts any one MAUVE value was computed on."""
    groups = per_seed.groupby("config", sort=False)
    metrics = [m for m in METRICS if m in per_seed]
    summary = groups[metrics].mean()
    cells = pooled(per_text) if "config" in per_text else pd.DataFrame()
    for metric in cells:
        if metric in summary:
            summary[metric] = cells[metric].reindex(summary.index).fillna(summary[metric])
    summary["n"] = groups["n"].sum()
    summary["seeds"] = groups["seed"].nunique() if "seed" in per_seed else 1
    if "mauve_values" in per_seed:
        summary["mauve_std"] = groups["mauve_values"].apply(
            lambda lists: float(np.std([v for vs in lists.dropna() for v in vs]))
            if lists.notna().any() else math.nan)
        summary["mauve_n"] = per_seed[per_seed["mauve"].notna()].groupby("config")["n"].min()
    described = groups[[c for c in per_seed if c not in (*METRICS, "n", "seed",
                                                          "mauve_values")]].first()
    shown = settings(jobs) if jobs else pd.DataFrame(index=summary.index)
    params = [p for p in parameters(jobs) if p in described]
    summary = pd.concat([described.drop(columns=[c for c in shown if c in described]),
                         shown.reindex(summary.index), summary], axis=1)
    summary["config"] = summary.index
    order = ["method", *params, *shown, "n", "seeds", "mauve", "mauve_std", "mauve_n",
             *[m for m in METRICS if m != "mauve"], "model", "dataset", "max_new_tokens",
             "config", "references", "job"]
    summary = summary[list(dict.fromkeys(c for c in order if c in summary))]
    summary = summary.dropna(axis=1, how="all").reset_index(drop=True)
    is_human = summary["method"] == "human"
    keys = [k for k in ["method", *params, *shown] if k in summary]
    return pd.concat([summary[~is_human].sort_values(keys, na_position="first"),
                      summary[is_human].sort_values(keys, na_position="first")],
                     ignore_index=True)
