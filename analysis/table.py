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
from analysis.diversity import diversity_metrics, ngram_counts
from analysis.features import disk_cached, featurize
from analysis.latex import LatexConfig, write_latex
from analysis.load import Job, reference_keys
from analysis.mauve import MauveConfig, mauve_scores
from analysis.stats import BootstrapConfig

log = logging.getLogger(__name__)

PARAMETERS = ["alpha", "top_k", "mass", "top_p", "typical_p", "min_p", "epsilon", "eta",
              "n_sigma", "temperature"]
KEYS = ["method", *PARAMETERS, "model", "dataset", "max_new_tokens"]
NGRAM_COLUMNS = ["u2", "t2", "u3", "t3", "u4", "t4"]
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
    counts = ngram_counts(texts, cfg.diversity.skip_last_ngram)
    per_text.update({name: counts[:, i] for i, name in enumerate(NGRAM_COLUMNS)})
    row: dict = {"n": len(texts), **diversity_metrics(texts, cfg.diversity.skip_last_ngram)}
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
        scores = disk_cached("mauve", [vars(m), references, texts], lambda: mauve_scores(p, q, m))
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
    """The columns that identify a job's rows: method, its parameters, references, dirs."""
    selector = dict(job.config["selector"])
    return {"method": selector.pop("method"), **selector, **reference_keys(job.config),
            "job": job.name}


def per_text_rows(base: dict, records: list[dict], seed: int | None, stats: dict) -> list[dict]:
    """Rows of ``per_text.csv``: one per text with its configuration, prompt, seed and
    sufficient statistics."""
    rows = []
    for i, record in enumerate(records):
        row = {**base, "prompt_id": record["prompt_id"], "seed": seed,
               **{name: float(values[i]) for name, values in stats.items()}}
        if seed is not None:  # a generation (not a human reference)
            row.update(num_tokens=record["num_tokens"], eos=record["finish_reason"] == "eos",
                       **{key: record[key] for key in DIAGNOSTICS if key in record})
        rows.append(row)
    return rows


def job_rows(job: Job, cfg: MetricsConfig, texts: list[dict] | None = None) -> list[dict]:
    """One row per generation seed of ``job``; its texts' rows go into ``texts``."""
    texts = [] if texts is None else texts
    base = configuration(job)
    generator = job.config["model"]["source"]
    rows = []
    for seed in sorted({r["seed"] for r in job.records}):
        records = sorted((r for r in job.records if r["seed"] == seed),
                         key=lambda r: r["prompt_id"])
        row, stats = {**base, "seed": seed}, {}
        row.update(text_metrics([r["prompt"] for r in records],
                                [r["continuation"] for r in records],
                                [r["reference"] for r in records], cfg, generator,
                                f"job {job.name}, seed {seed}", stats))
        texts += per_text_rows(base, records, seed, stats)
        row["mean_tokens"] = float(np.mean([r["num_tokens"] for r in records]))
        row["eos_rate"] = float(np.mean([r["finish_reason"] == "eos" for r in records]))
        for key in DIAGNOSTICS:
            values = [r[key] for r in records if key in r]
            row[key] = float(np.mean(values)) if values else math.nan
        rows.append(row)
    return rows


def human_rows(jobs: list[Job], cfg: MetricsConfig, texts: list[dict] | None = None,
               ) -> list[dict]:
    """The references themselves, one row per kind of reference, over the prompts the jobs
    with those references are compared on; their texts' rows go into ``texts``."""
    texts = [] if texts is None else texts
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(reference_keys(job.config).values()), []).append(job)
    rows = []
    for group in groups.values():
        by_prompt = {r["prompt_id"]: r for job in group for r in job.records}
        records = [by_prompt[i] for i in sorted(by_prompt)]
        references = [r["reference"] for r in records]
        base = {"method": "human", **reference_keys(group[0].config)}
        row, stats = dict(base), {}
        row.update(text_metrics([r["prompt"] for r in records], references, references, cfg,
                                group[0].config["model"]["source"], "human references", stats))
        row["mean_tokens"] = float(row["max_new_tokens"])  # references have exactly this many
        texts += per_text_rows(base, records, None, stats)
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


SHOWN = [  # (column, scale, header) of the rendered table; every number is in summary.csv
    ("mauve", 100, "MAUVE"), ("diversity", 100, "diversity"), ("rep_2", 1, "rep-2"),
    ("coherence", 1, "coherence"), ("perplexity", 1, "perplexity"),
    ("topk_identical_rate", 100, "top-k identical %")]
DELTAS = ["mauve", "diversity", "coherence", "perplexity"]


def _number(value: float, scale: float) -> str:
    return "" if pd.isna(value) else f"{value * scale:.2f}"


def formatted(row: pd.Series, column: str, scale: float) -> str:
    """``value [lo, hi]``; MAUVE ``value ± std``; Δ columns ``Δ [lo, hi]`` and ``*`` where the
    Holm-adjusted p < 0.05."""
    value = row.get(column)
    if pd.isna(value):
        return ""
    text = _number(value, scale)
    if column == "mauve" and pd.notna(row.get("mauve_std")):
        return f"{text} ± {_number(row['mauve_std'], scale)}"
    low, high = row.get(f"{column}_lo"), row.get(f"{column}_hi")
    if pd.notna(low) and pd.notna(high):
        text += f" [{_number(low, scale)}, {_number(high, scale)}]"
    metric = column.removeprefix("delta_")
    if column.startswith("delta_") and row.get(f"p_{metric}_holm", 1.0) < 0.05:
        text += " *"
    return text


def rendered(summary: pd.DataFrame) -> pd.DataFrame:
    """The table as strings: parameters, n, each metric with its interval, the Δs."""
    shown = [c for c in ["method", *PARAMETERS, "n"] if c in summary
             and not (c == "temperature" and set(summary[c].dropna()) <= {1.0})]
    frame = pd.DataFrame({c: summary[c] for c in shown})
    frame = frame.astype(object).where(frame.notna(), "")
    for column in ("n", *PARAMETERS):
        if column in frame:
            frame[column] = [f"{v:g}" if v != "" else "" for v in frame[column]]
    for column, scale, header in SHOWN:
        if column in summary:
            frame[header] = [formatted(row, column, scale) for _, row in summary.iterrows()]
        if column in DELTAS and f"delta_{column}" in summary:
            frame[f"Δ {header}"] = [formatted(row, f"delta_{column}", scale)
                                    for _, row in summary.iterrows()]
    return frame


def render_markdown(summary: pd.DataFrame, min_samples: int, notes: list[str] = ()) -> str:
    """The papers' formatting (MAUVE and diversity x 100, two decimals), with intervals."""
    table = rendered(summary).to_markdown(index=False, disable_numparse=True)
    notes = ["MAUVE, diversity and top-k identical are x 100; rep-2 in percent; summary.csv "
             "has every other metric (distinct-n, coherence_ll, mean tokens, EOS rate, "
             "diagnostics) with its interval and Δ; distinct-n has no interval (a corpus "
             "statistic).", *notes]
    if (summary["n"] < min_samples).any():
        notes.append(f"Warning: rows with n < {min_samples} samples: MAUVE is biased upward and "
                     "noisy there; compare such values only with each other, at equal n.")
    return table + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def write_tables(per_seed: pd.DataFrame, summary: pd.DataFrame, per_text: pd.DataFrame,
                 out: Path, min_samples: int, notes: list[str], latex: LatexConfig,
                 bootstrap: BootstrapConfig) -> str:
    per_seed.drop(columns=["mauve_values"], errors="ignore").to_csv(out / "per_seed.csv",
                                                                    index=False)
    per_text.to_csv(out / "per_text.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    markdown = render_markdown(summary, min_samples, notes)
    (out / "summary.md").write_text(markdown)
    write_latex(summary, rendered(summary), out, latex, bootstrap.samples, bootstrap.level)
    return markdown
