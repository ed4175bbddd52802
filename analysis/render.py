"""The summary table as text: Markdown (the papers' formatting, with intervals), LaTeX, CSVs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.latex import LatexConfig, significance_floor, write_latex
from analysis.stats import BootstrapConfig
from analysis.uncertainty import delta_label

SHOWN = [  # (column, scale, header) of the rendered table; every number is in summary.csv
    ("mauve", 100, "MAUVE"), ("diversity", 100, "diversity"), ("rep_2", 1, "rep-2"),
    ("coherence", 1, "coherence"), ("perplexity", 1, "perplexity"),
    ("topk_identical_rate", 100, "top-k identical %")]
DELTAS = ["mauve", "diversity", "coherence", "perplexity"]


def _number(value: float, scale: float) -> str:
    return "" if pd.isna(value) else f"{value * scale:.2f}"


def formatted(row: pd.Series, column: str, scale: float) -> str:
    """``value [lo, hi]``; MAUVE ``value ± std``; Δ columns ``Δ [lo, hi]``, ``*`` where the
    Holm-adjusted p < 0.05 and ``†`` where Δ is on fewer (prompt, seed) pairs than its cells."""
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
    if column.startswith("delta_") and metric != "mauve" and row.get("delta_subset", 0) == 1:
        text += " †"
    return text


def described(summary: pd.DataFrame) -> list[str]:
    """The columns that say what a row is (method, parameters, the settings rows differ in):
    ``summarize`` puts them before ``n``. A temperature of 1 everywhere is left out."""
    columns = list(summary.columns[: list(summary.columns).index("n")])
    return [c for c in columns
            if not (c == "temperature" and set(summary[c].dropna()) <= {1.0})]


def rendered(summary: pd.DataFrame) -> pd.DataFrame:
    """The table as strings: what the row is, n, each metric with its interval, the Δs."""
    shown = [*described(summary), "n"]
    frame = summary[shown].astype(object).where(summary[shown].notna(), "")
    for column in shown[1:]:
        frame[column] = [f"{v:g}" if isinstance(v, int | float) and not isinstance(v, bool)
                         else str(v) for v in frame[column]]
    for column, scale, header in SHOWN:
        if column in summary:
            frame[header] = [formatted(row, column, scale) for _, row in summary.iterrows()]
        if column in DELTAS and f"delta_{column}" in summary:
            frame[delta_label(column, header)] = [formatted(row, f"delta_{column}", scale)
                                    for _, row in summary.iterrows()]
    return frame


def render_markdown(summary: pd.DataFrame, min_samples: int, notes: list[str] = ()) -> str:
    """The papers' formatting (MAUVE and diversity x 100, two decimals), with intervals."""
    table = rendered(summary).to_markdown(index=False, disable_numparse=True)
    notes = ["MAUVE, diversity and top-k identical are x 100; rep-2 in percent; summary.csv "
             "has every other metric (distinct-n, coherence_ll, mean tokens, EOS rate, "
             "diagnostics) with its interval and Δ; distinct-n has no interval (a corpus "
             "statistic).", *notes]
    if "mauve_n" in summary and (summary["mauve_n"] < min_samples).any():
        notes.append(f"Warning: some MAUVE values are computed on fewer than {min_samples} "
                     "texts (each MAUVE is one generation seed's texts against the references; "
                     f"here as few as {summary['mauve_n'].min():g}): MAUVE is biased upward and "
                     "noisy there; compare such values only with each other, at equal n.")
    floor = significance_floor(summary)
    if floor:
        notes.append(floor)
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
