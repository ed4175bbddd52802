"""Per-seed metrics of every job, the summary table (seeds aggregated), and its renderings."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.coherence import (
    CoherenceConfig,
    embedding_coherence,
    likelihood_metrics,
    token_log_likelihoods,
)
from analysis.diversity import diversity_metrics
from analysis.features import disk_cached, featurize
from analysis.load import Job
from analysis.mauve import MauveConfig, mauve_scores

log = logging.getLogger(__name__)

PARAMETERS = ["alpha", "top_k", "mass", "top_p", "typical_p", "min_p", "epsilon", "eta",
              "n_sigma", "temperature"]
KEYS = ["method", *PARAMETERS, "model", "dataset", "max_new_tokens"]
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
                 cfg: MetricsConfig, generator: str | None, label: str) -> dict:
    """Every metric of one set of texts; MAUVE against the references of the same prompts.
    A metric family that fails (a featurizer that cannot load, too few samples for k-means)
    is logged under ``label`` and left blank; the others are still computed."""
    row: dict = {"n": len(texts), **diversity_metrics(texts, cfg.diversity.skip_last_ngram)}
    if not any(t.strip() for t in texts):
        log.warning("%s: all %d texts are empty; MAUVE and coherence left blank", label,
                    len(texts))
        return row

    def coherence() -> dict:
        similarity = embedding_coherence(prompts, texts, cfg.coherence, generator)
        return {"coherence": float(np.mean(similarity))}

    def mauve() -> dict:
        m = cfg.mauve
        p = featurize(references, m.featurizer, m.max_tokens, generator)
        q = featurize(texts, m.featurizer, m.max_tokens, generator)
        scores = disk_cached("mauve", [vars(m), references, texts], lambda: mauve_scores(p, q, m))
        return {"mauve": float(np.mean(scores)), "mauve_values": list(scores)}

    families = {"coherence": coherence, "coherence_ll and perplexity": lambda: likelihood_metrics(
        token_log_likelihoods(prompts, texts, cfg.coherence))}
    if texts is not references:
        families["MAUVE"] = mauve
    for name, compute in families.items():
        try:
            row.update(compute())
        except (ValueError, RuntimeError, OSError) as error:
            log.warning("%s: %s left blank: %s", label, name, error)
    return row


def configuration(job: Job) -> dict:
    """The columns that identify a job's rows: method, its parameters, references, dirs."""
    selector = dict(job.config["selector"])
    return {"method": selector.pop("method"), **selector, **reference_keys(job), "job": job.name}


def job_rows(job: Job, cfg: MetricsConfig) -> list[dict]:
    """One row per generation seed of ``job``."""
    base = configuration(job)
    generator = job.config["model"]["source"]
    rows = []
    for seed in sorted({r["seed"] for r in job.records}):
        records = sorted((r for r in job.records if r["seed"] == seed),
                         key=lambda r: r["prompt_id"])
        row = {**base, "seed": seed}
        row.update(text_metrics([r["prompt"] for r in records],
                                [r["continuation"] for r in records],
                                [r["reference"] for r in records], cfg, generator,
                                f"job {job.name}, seed {seed}"))
        row["mean_tokens"] = float(np.mean([r["num_tokens"] for r in records]))
        row["eos_rate"] = float(np.mean([r["finish_reason"] == "eos" for r in records]))
        for key in ("topk_identical_rate", "kept_mean", "mass_mean", "rank_mean"):
            values = [r[key] for r in records if key in r]
            row[key] = float(np.mean(values)) if values else math.nan
        rows.append(row)
    return rows


def reference_keys(job: Job) -> dict:
    """What defines a job's references: the next max_new_tokens tokens (of the model's
    tokenizer) of the dataset's documents."""
    return {"model": job.config["model"]["name"], "dataset": job.config["dataset"]["name"],
            "max_new_tokens": job.config["generation"]["max_new_tokens"]}


def human_rows(jobs: list[Job], cfg: MetricsConfig) -> list[dict]:
    """The references themselves, one row per kind of reference, over every prompt any job
    with those references saw."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(reference_keys(job).values()), []).append(job)
    rows = []
    for group in groups.values():
        by_prompt = {r["prompt_id"]: r for job in group for r in job.records}
        records = [by_prompt[i] for i in sorted(by_prompt)]
        references = [r["reference"] for r in records]
        row = {"method": "human", **reference_keys(group[0])}
        row.update(text_metrics([r["prompt"] for r in records], references, references, cfg,
                                group[0].config["model"]["source"], "human references"))
        row["mean_tokens"] = float(row["max_new_tokens"])  # references have exactly this many
        rows.append(row)
    return rows


def summarize(per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: metrics as means over seeds; ``mauve_std`` is the std of every
    MAUVE value of the configuration (each generation seed x each k-means seed)."""
    keys = [k for k in KEYS if k in per_seed]
    frame = per_seed.copy()
    frame[keys] = frame[keys].astype(object).where(frame[keys].notna(), "")
    groups = frame.groupby(keys, sort=False, dropna=False)
    metrics = [m for m in METRICS if m in frame]
    summary = groups[metrics].mean()
    summary["n"] = groups["n"].sum()
    summary["seeds"] = groups["seed"].nunique() if "seed" in frame else 1
    if "mauve_values" in frame:
        summary["mauve_std"] = groups["mauve_values"].apply(
            lambda lists: float(np.std([v for vs in lists.dropna() for v in vs]))
            if lists.notna().any() else math.nan)
    summary = summary.reset_index().replace("", math.nan)
    order = ["method", *[p for p in PARAMETERS if p in summary], "n", "seeds", "mauve",
             "mauve_std", *[m for m in METRICS if m != "mauve"], "model", "dataset",
             "max_new_tokens"]
    summary = summary[[c for c in order if c in summary]]
    summary = summary.dropna(axis=1, how="all")
    is_human = summary["method"] == "human"
    order = [k for k in KEYS if k in summary]
    return pd.concat([summary[~is_human].sort_values(order, na_position="first"),
                      summary[is_human].sort_values(order)], ignore_index=True)


def render_markdown(summary: pd.DataFrame, min_samples: int, notes: list[str] = ()) -> str:
    """The papers' formatting: MAUVE and diversity x 100, two decimals."""
    shown = summary.copy()
    for column in ("mauve", "mauve_std", "diversity", "distinct_2", "topk_identical_rate"):
        if column in shown:
            shown[column] = shown[column] * 100
    columns = [c for c in ["method", *PARAMETERS, "n", "mauve", "mauve_std", "diversity",
                           "rep_2", "rep_3", "rep_4", "distinct_2", "coherence",
                           "coherence_ll", "perplexity", "mean_tokens", "eos_rate",
                           "topk_identical_rate"] if c in shown]
    shown = shown[columns].astype(object).where(shown[columns].notna(), None)
    table = shown.to_markdown(index=False, floatfmt=".2f", missingval="")
    notes = ["MAUVE, diversity, distinct-2 and topk_identical_rate are x 100; rep-n in percent.",
             *notes]
    if (summary["n"] < min_samples).any():
        notes.append(f"Warning: rows with n < {min_samples} samples: MAUVE is biased upward and "
                     "noisy there; compare such values only with each other.")
    return table + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def write_tables(per_seed: pd.DataFrame, summary: pd.DataFrame, out: Path,
                 min_samples: int, notes: list[str] = ()) -> str:
    per_seed.drop(columns=["mauve_values"], errors="ignore").to_csv(out / "per_seed.csv",
                                                                    index=False)
    summary.to_csv(out / "summary.csv", index=False)
    markdown = render_markdown(summary, min_samples, notes)
    (out / "summary.md").write_text(markdown)
    summary.to_latex(out / "summary.tex", index=False, float_format="%.2f", na_rep="")
    return markdown
