"""Plots of the summary table (matplotlib, PNG)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt  # headless machines fall back to the Agg backend
import pandas as pd

SHORT = {"locally_typical_distance": "LTD", "locally_typical": "LT"}


def label(row: pd.Series) -> str:
    params = [f"{p.replace('alpha', 'α')}={row[p]:g}"
              for p in ("alpha", "top_k", "top_p", "typical_p", "min_p")
              if p in row and pd.notna(row[p])]
    return " ".join([SHORT.get(row["method"], row["method"]), *params])


def mauve_vs_diversity(summary: pd.DataFrame, path: Path) -> bool:
    """One point per configuration with its diversity interval and MAUVE std as error bars.
    Points are numbered and the legend names them, so labels never overlap; configurations
    with identical texts share one point (and one number)."""
    if not {"mauve", "diversity"} <= set(summary):
        return False
    runs = summary[summary["method"] != "human"].dropna(subset=["mauve", "diversity"])
    if runs.empty:
        return False
    fig, ax = plt.subplots(figsize=(9, 6))
    colors = dict(zip(runs["method"].unique(), plt.rcParams["axes.prop_cycle"].by_key()["color"]
                      * 3, strict=False))
    points = runs.groupby([runs["diversity"].round(10), runs["mauve"].round(10)], sort=False)
    for number, ((x, y), group) in enumerate(points, 1):
        first = group.iloc[0]
        xerr = None
        if {"diversity_lo", "diversity_hi"} <= set(group) and pd.notna(first["diversity_lo"]):
            xerr = [[(x - first["diversity_lo"]) * 100], [(first["diversity_hi"] - x) * 100]]
        yerr = first["mauve_std"] * 100 if pd.notna(first.get("mauve_std")) else None
        ax.errorbar(x * 100, y * 100, xerr=xerr, yerr=yerr, fmt="o", ms=6, capsize=3,
                    color=colors[first["method"]], alpha=0.85,
                    label="\n".join(textwrap.wrap(f"{number}: " + " = ".join(
                        label(row) for _, row in group.iterrows()), 70)))
        ax.annotate(str(number), (x * 100, y * 100), xytext=(4, 4), textcoords="offset points",
                    fontsize=8)
    humans = summary[summary["method"] == "human"].dropna(subset=["diversity"])
    for _, human in humans.iterrows():
        ax.axvline(human["diversity"] * 100, color="black", linestyle="--", label=(
            f"human diversity ({human['dataset']}, {human['max_new_tokens']:g} tokens)"))
    ax.set(xlabel="diversity (x100, 95% interval)", ylabel="MAUVE (x100, ± std)",
           title="MAUVE vs diversity (LT: locally_typical, LTD: locally_typical_distance)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def metric_vs_alpha(summary: pd.DataFrame, metric: str, path: Path) -> bool:
    """The metric against alpha per method and top_k, with its 95% interval as a band."""
    if "alpha" not in summary or metric not in summary:
        return False
    runs = summary.dropna(subset=["alpha", metric])
    if runs.empty:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    for (method, top_k), group in runs.groupby(["method", "top_k"], dropna=False):
        group = group.sort_values("alpha")
        line = ax.plot(group["alpha"], group[metric], marker="o",
                       label=f"{method} top_k={top_k:g}")[0]
        if {f"{metric}_lo", f"{metric}_hi"} <= set(group):
            ax.fill_between(group["alpha"].astype(float), group[f"{metric}_lo"].astype(float),
                            group[f"{metric}_hi"].astype(float),
                            color=line.get_color(), alpha=0.15, linewidth=0)
    human = summary[summary["method"] == "human"]
    if not human.empty and pd.notna(human[metric].iloc[0]):
        ax.axhline(human[metric].iloc[0], color="black", linestyle="--", label="human")
    ax.set(xlabel="alpha", ylabel=metric, title=f"{metric} vs alpha (bands: 95% intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def heatmap(summary: pd.DataFrame, method: str, metric: str, path: Path) -> bool:
    if not {"alpha", "top_k", metric} <= set(summary):
        return False
    runs = summary[summary["method"] == method].dropna(subset=["alpha", "top_k", metric])
    grid = runs.pivot_table(index="alpha", columns="top_k", values=metric)
    if grid.shape[0] < 2 or grid.shape[1] < 2:
        return False
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(grid.values, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
    for (i, j), value in pd.DataFrame(grid.values).stack().items():
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", color="white", fontsize=8)
    ax.set(xlabel="top_k", ylabel="alpha", title=f"{method}: {metric}")
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def make_plots(summary: pd.DataFrame, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if mauve_vs_diversity(summary, directory / "mauve_vs_diversity.png"):
        written.append(directory / "mauve_vs_diversity.png")
    for metric in ("mauve", "diversity", "coherence", "topk_identical_rate"):
        if metric_vs_alpha(summary, metric, directory / f"{metric}_vs_alpha.png"):
            written.append(directory / f"{metric}_vs_alpha.png")
    for method in summary["method"].unique():
        path = directory / f"heatmap_{method}_mauve.png"
        if "mauve" in summary and heatmap(summary, method, "mauve", path):
            written.append(path)
    return written
