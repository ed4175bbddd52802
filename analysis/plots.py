"""Plots of the summary table (matplotlib, PNG)."""

from __future__ import annotations

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
    if not {"mauve", "diversity"} <= set(summary):
        return False
    runs = summary[summary["method"] != "human"].dropna(subset=["mauve", "diversity"])
    if runs.empty:
        return False
    fig, ax = plt.subplots(figsize=(8, 6))
    for method, group in runs.groupby("method"):
        ax.scatter(group["diversity"] * 100, group["mauve"] * 100, label=method, s=40)
    # Paired seeding makes equivalent selectors land on the same point: one label for all.
    for (x, y), group in runs.groupby([runs["diversity"] * 100, runs["mauve"] * 100]):
        ax.annotate(" =\n".join(label(row) for _, row in group.iterrows()), (x, y),
                    fontsize=7, xytext=(-6, 0), textcoords="offset points", ha="right",
                    va="center")
    humans = summary[summary["method"] == "human"].dropna(subset=["diversity"])
    for _, human in humans.iterrows():
        ax.axvline(human["diversity"] * 100, color="black", linestyle="--", label=(
            f"human diversity ({human['dataset']}, {human['max_new_tokens']:g} tokens)"))
    ax.set(xlabel="diversity (x100)", ylabel="MAUVE (x100)",
           title="MAUVE vs diversity (LT: locally_typical, LTD: locally_typical_distance)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def metric_vs_alpha(summary: pd.DataFrame, metric: str, path: Path) -> bool:
    if "alpha" not in summary or metric not in summary:
        return False
    runs = summary.dropna(subset=["alpha", metric])
    if runs.empty:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    for (method, top_k), group in runs.groupby(["method", "top_k"], dropna=False):
        group = group.sort_values("alpha")
        ax.plot(group["alpha"], group[metric], marker="o", label=f"{method} top_k={top_k:g}")
    human = summary[summary["method"] == "human"]
    if not human.empty and pd.notna(human[metric].iloc[0]):
        ax.axhline(human[metric].iloc[0], color="black", linestyle="--", label="human")
    ax.set(xlabel="alpha", ylabel=metric, title=f"{metric} vs alpha")
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
