"""Plots of the summary table (matplotlib, PNG), in the table's units (MAUVE, diversity and the
rates x 100) and with the table's names of the configurations."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt  # headless machines fall back to the Agg backend
import numpy as np
import pandas as pd

from analysis.latex import METRICS, label, parameter_columns

NEAR = 8  # pixels: number labels of points closer than this are merged into one


def units(metric: str) -> str:
    header = METRICS[metric].header
    return f"{header} (x100)" if METRICS[metric].scale == 100 else header


def spread(row: pd.Series, metric: str) -> tuple[float, float] | None:
    """The (low, high) a plot draws around ``metric``, in its units: the 95% interval, or
    MAUVE's mean ± std; None where the row has neither."""
    scale, value = METRICS[metric].scale, row[metric]
    low, high, std = (row.get(f"{metric}_{s}") for s in ("lo", "hi", "std"))
    if pd.notna(low) and pd.notna(high):
        return low * scale, high * scale
    if pd.notna(std):
        return (value - std) * scale, (value + std) * scale
    return None


def band_name(summary: pd.DataFrame, metric: str) -> str:
    return "± std" if f"{metric}_std" in summary and f"{metric}_lo" not in summary else (
        "95% intervals")


def merged_labels(ax: plt.Axes, points: list[tuple[float, float]]) -> list[tuple[int, list[int]]]:
    """The points' numbers (1-based), those of points within ``NEAR`` pixels of an earlier one
    merged onto it: [(index of the point the label goes to, numbers)]."""
    pixels = ax.transData.transform(np.asarray(points, dtype=float))
    clusters: list[tuple[int, list[int]]] = []
    for i, pixel in enumerate(pixels):
        near = next((c for c in clusters if np.hypot(*(pixels[c[0]] - pixel)) < NEAR), None)
        if near is None:
            clusters.append((i, [i + 1]))
        else:
            near[1].append(i + 1)
    return clusters


# where a number goes around its point: (x, y) offset in points and alignment; the first
# place where it overlaps no label placed before it is taken
PLACES = [(4, 4, "left"), (4, -12, "left"), (-4, 4, "right"), (-4, -12, "right"),
          (4, 14, "left"), (-4, 14, "right"), (4, -22, "left"), (-4, -22, "right")]


def number_points(fig: plt.Figure, ax: plt.Axes, points: list[tuple[float, float]]) -> list:
    """Each point's number beside it, in the figure's final layout: numbers of coinciding
    points written once together ("3, 4"), and each label placed where it overlaps no other.
    The annotations."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed, annotations = [], []
    for index, numbers in merged_labels(ax, points):
        for dx, dy, align in PLACES:
            annotation = ax.annotate(", ".join(map(str, numbers)), points[index],
                                     xytext=(dx, dy), textcoords="offset points", ha=align,
                                     fontsize=8)
            box = annotation.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or (dx, dy, align) == PLACES[-1]:
                break
            annotation.remove()
        placed.append(box)
        annotations.append(annotation)
    return annotations


def mauve_vs_diversity(summary: pd.DataFrame, path: Path) -> bool:
    """One point per configuration with its diversity interval and MAUVE std as error bars.
    Points are numbered and the legend names them; configurations with identical values share
    one point (and one number), and the numbers of points that (nearly) coincide are written
    once, together ("3, 4")."""
    if not {"mauve", "diversity"} <= set(summary):
        return False
    runs = summary[summary["method"] != "human"].dropna(subset=["mauve", "diversity"])
    if runs.empty:
        return False
    params = parameter_columns(summary)
    fig, ax = plt.subplots(figsize=(9, 6))
    colors = dict(zip(runs["method"].unique(), plt.rcParams["axes.prop_cycle"].by_key()["color"]
                      * 3, strict=False))
    points = runs.groupby([runs["diversity"].round(10), runs["mauve"].round(10)], sort=False)
    centres = []
    for number, (_, group) in enumerate(points, 1):
        first = group.iloc[0]
        x, y = first["diversity"] * 100, first["mauve"] * 100
        xerr, yerr = (None if (interval := spread(first, m)) is None else
                      [[max(0.0, value - interval[0])], [max(0.0, interval[1] - value)]]
                      for m, value in (("diversity", x), ("mauve", y)))
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", ms=6, capsize=3,
                    color=colors[first["method"]], alpha=0.85,
                    label="\n".join(textwrap.wrap(f"{number}: " + " = ".join(
                        label(row, params, latex=False) for _, row in group.iterrows()), 70)))
        centres.append((x, y))
    humans = summary[summary["method"] == "human"].dropna(subset=["diversity"])
    for _, human in humans.iterrows():
        ax.axvline(human["diversity"] * 100, color="black", linestyle="--", label=(
            f"human diversity ({human['dataset']}, {human['max_new_tokens']:g} tokens)"))
    ax.set(xlabel="Diversity (x100, 95% interval)", ylabel="MAUVE (x100, ± std)",
           title="MAUVE vs diversity")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    number_points(fig, ax, centres)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def metric_vs_alpha(summary: pd.DataFrame, metric: str, path: Path) -> bool:
    """The metric against alpha, one line per configuration but its alpha (method, top_k, ...),
    with its 95% interval (MAUVE: ± std) as a band."""
    if "alpha" not in summary or metric not in summary:
        return False
    runs = summary.dropna(subset=["alpha", metric])
    if runs.empty:
        return False
    scale = METRICS[metric].scale
    others = [p for p in parameter_columns(summary) if p != "alpha"]
    fig, ax = plt.subplots(figsize=(7, 5))
    lines = runs.groupby(["method", *others], dropna=False, sort=False) if others else (
        runs.groupby("method", sort=False))
    for _, group in lines:
        group = group.sort_values("alpha")
        line = ax.plot(group["alpha"], group[metric] * scale, marker="o",
                       label=label(group.iloc[0], others, latex=False))[0]
        bands = [spread(row, metric) for _, row in group.iterrows()]
        if all(b is not None for b in bands):
            low, high = zip(*bands, strict=True)
            ax.fill_between(group["alpha"].astype(float), low, high, color=line.get_color(),
                            alpha=0.15, linewidth=0)
    human = summary[summary["method"] == "human"]
    if not human.empty and pd.notna(human[metric].iloc[0]):
        ax.axhline(human[metric].iloc[0] * scale, color="black", linestyle="--", label="human")
    ax.set(xlabel="alpha", ylabel=units(metric),
           title=f"{METRICS[metric].header} vs alpha (bands: {band_name(summary, metric)})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def heatmap(summary: pd.DataFrame, method: str, metric: str, path: Path) -> bool:
    if not {"alpha", "top_k", metric} <= set(summary):
        return False
    runs = summary[summary["method"] == method].dropna(subset=["alpha", "top_k", metric])
    grid = runs.pivot_table(index="alpha", columns="top_k", values=metric) * METRICS[metric].scale
    if grid.shape[0] < 2 or grid.shape[1] < 2:
        return False
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(grid.values, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
    for (i, j), value in pd.DataFrame(grid.values).stack().items():
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", color="white", fontsize=8)
    ax.set(xlabel="top_k", ylabel="alpha", title=f"{method}: {units(metric)}")
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
