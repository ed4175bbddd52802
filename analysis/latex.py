"""LaTeX for papers, each file compiling ``\\input`` into a plain ``article`` with ``booktabs``:

- ``summary.tex``: the paper table, one configuration column and the headline metrics
  (``table.latex.metrics``), each as its value with its interval (MAUVE: ± std) and its Δ
  against the baseline, ``$^{*}$`` where Holm-significant, the best value in bold only where it
  is significantly better than the runner-up; the caption states n, the resampling, Holm and the
  minimum detectable Δ;
- ``summary_full.tex``: every column of ``summary.md`` (wide: for an appendix or a landscape
  page);
- ``samples.tex``: example generations of the first ``table.latex.samples`` prompts side by side
  (see ``analysis.samples``).
"""

from __future__ import annotations

import logging
import math
import re
import textwrap
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pylatexenc.latexencode import UnicodeToLatexEncoder

from analysis import uncertainty
from analysis.load import Job
from analysis.samples import SamplePrompt, sample_prompts

log = logging.getLogger(__name__)


@dataclass
class LatexConfig:
    """``table.latex`` in ``conf/analysis.yaml``."""

    metrics: list[str] = field(default_factory=lambda: ["mauve", "diversity", "coherence"])
    samples: int = 3  # prompts shown in samples.tex

    def __post_init__(self) -> None:  # at load_config, before any metric is computed
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"table.latex.metrics={list(self.metrics)}: unknown metric(s) "
                             f"{unknown}; choose from {', '.join(METRICS)}.")
        if self.samples < 0:
            raise ValueError(f"table.latex.samples={self.samples}: the number of prompts shown "
                             "in samples.tex must be >= 0.")


@dataclass
class TableConfig:
    """``table`` in ``conf/analysis.yaml``: how the summary is rendered."""

    latex: LatexConfig = field(default_factory=LatexConfig)


@dataclass(frozen=True)
class Metric:
    header: str  # plain text; escaped for LaTeX, shown as is in HTML
    scale: float
    decimals: int
    better: int  # +1: higher is better, -1: lower is better, 0: neither (no bold)


METRICS = {
    "mauve": Metric("MAUVE", 100, 1, 1),
    "diversity": Metric("Diversity", 100, 1, 1),
    "coherence": Metric("Coherence", 1, 3, 1),
    "coherence_ll": Metric("Coherence LL", 1, 2, 0),
    "perplexity": Metric("PPL", 1, 1, 0),
    **{f"rep_{n}": Metric(f"rep-{n}", 1, 1, -1) for n in (2, 3, 4)},
    **{f"distinct_{n}": Metric(f"distinct-{n}", 100, 1, 1) for n in (1, 2, 3, 4)},
    "mean_tokens": Metric("Tokens", 1, 1, 0),
    "eos_rate": Metric("EOS %", 100, 1, 0),
    "topk_identical_rate": Metric("top-k identical %", 100, 1, 0),
    "kept_mean": Metric("Kept", 1, 1, 0),
    "mass_mean": Metric("Mass", 1, 2, 0),
    "rank_mean": Metric("Rank", 1, 2, 0),
}
METHODS = {"locally_typical_distance": ("LTD", "LTD"), "locally_typical": ("LT", "LT"),
           "top_k": ("top-$k$", "top-k"), "top_p": ("top-$p$", "top-p"),
           "min_p": ("min-$p$", "min-p"), "top_n_sigma": ("top-$n\\sigma$", "top-nσ"),
           "epsilon": ("$\\epsilon$-sampling", "ε-sampling"),
           "eta": ("$\\eta$-sampling", "η-sampling")}
SYMBOLS = {"alpha": ("\\alpha", "α"), "top_k": ("k", "k"), "top_p": ("p", "p"),
           "typical_p": ("\\tau", "τ"), "min_p": ("p_{\\min}", "p_min"),
           "epsilon": ("\\epsilon", "ε"), "eta": ("\\eta", "η"), "n_sigma": ("n", "n"),
           "mass": ("m", "m"), "temperature": ("T", "T")}
SIGNIFICANT = 0.05  # Holm-adjusted p below this: * and bold

_ASCII = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\ensuremath{\$}", "&": r"\&",
          "#": r"\#", "_": r"\_", "%": r"\%", "^": r"\textasciicircum{}",
          "~": r"\textasciitilde{}", "<": r"\textless{}", ">": r"\textgreater{}",
          "|": r"\textbar{}", "\n": " ", "\r": " ", "\t": " "}
_ENCODER = UnicodeToLatexEncoder(unknown_char_policy="replace", unknown_char_warning=False)
UNKNOWN = r"{\bfseries ?}"


_SIGNS = {"±": r"\ensuremath{\pm}", "×": r"\ensuremath{\times}", "÷": r"\ensuremath{\div}",
          "·": r"\ensuremath{\cdot}", "°": r"\ensuremath{^\circ}", "†": r"\ensuremath{\dagger}"}


def _encodable(char: str) -> bool:
    """Characters pdflatex's default setup (OT1, utf8) typesets with the Type 1 fonts of
    texlive-latex-base: Latin-1 letters (not the T1-only eth and thorn), Greek letters (math),
    the common dashes and quotes."""
    code = ord(char)
    return ((0xC0 <= code <= 0xFF and unicodedata.category(char).startswith("L")
             and char not in "ÐÞðþ") or 0x391 <= code <= 0x3C9 or char in "–—‘’“”…")


def tex(text: str) -> str:
    """``text`` as LaTeX text that compiles with pdflatex: specials escaped, Latin-1 and Greek
    kept, other characters folded to ASCII where Unicode can (ﬁ → fi) and a bold ? elsewhere
    (control characters, the U+FFFD of a cut multi-byte character)."""
    out = []
    for char in text:
        if char in _ASCII:
            out.append(_ASCII[char])
        elif " " <= char <= "~":
            out.append(char)
        elif char in _SIGNS:
            out.append(_SIGNS[char])
        elif _encodable(char):
            out.append(_ENCODER.unicode_to_latex(char))
        else:
            folded = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
            out.append("".join(_ASCII.get(c, c) for c in folded if " " <= c <= "~") or UNKNOWN)
    return "".join(out)


def number(value: float, decimals: int) -> str:
    """``value`` with ``decimals`` decimals and a typeset minus sign."""
    return "" if pd.isna(value) else f"{value:.{decimals}f}".replace("-", "$-$")


def parameter_columns(summary: pd.DataFrame) -> list[str]:
    """The selector parameters: the columns between ``method`` and ``n`` (the summary's
    column contract)."""
    columns = list(summary.columns)
    return columns[columns.index("method") + 1 : columns.index("n")]


def is_number(value: object) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)


def label(row: pd.Series | dict, params: list[str], latex: bool = True) -> str:
    """``LTD ($\\alpha{=}0.7$, $k{=}10$)`` (``latex``) or ``LTD (α=0.7, k=10)``: the method and
    its parameters (temperature only where it is not 1); settings that are not numbers (a
    model, a dataset, ``model.dtype``) as text: ``top-k ($k{=}10$, model.dtype=bfloat16)``."""
    method = row["method"]
    name = METHODS.get(method, (tex(method), method))[0 if latex else 1]
    shown = []
    for p in params:
        value = row.get(p)
        if (value is None or (pd.api.types.is_scalar(value) and pd.isna(value))
                or (p == "temperature" and value == 1)):
            continue
        if not is_number(value):
            shown.append(f"{tex(p)}={tex(str(value))}" if latex else f"{p}={value}")
            continue
        symbol = SYMBOLS.get(p, (f"\\mathit{{{tex(p)}}}", p))
        shown.append(f"${symbol[0]}{{=}}{value:g}$" if latex else f"{symbol[1]}={value:g}")
    return f"{name} ({', '.join(shown)})" if shown else name


def reference_groups(summary: pd.DataFrame) -> list[pd.DataFrame]:
    keys = [k for k in ("model", "dataset", "max_new_tokens") if k in summary]
    if not keys:
        return [summary]
    return [g for _, g in summary.groupby(keys, sort=False, dropna=False)]


def baseline_index(group: pd.DataFrame) -> int | None:
    """The row every Δ of ``group`` is measured against: the run with metrics but no Δ, in a
    group where other rows have Δs."""
    deltas = [c for c in group if c.startswith("delta_") and not c.endswith(("_lo", "_hi"))]
    runs = group[group["method"] != "human"]
    if not deltas or runs[deltas].isna().all(axis=None):
        return None
    metrics = [c.removeprefix("delta_") for c in deltas if c.removeprefix("delta_") in group]
    candidates = runs[runs[deltas].isna().all(axis=1) & runs[metrics].notna().any(axis=1)]
    return int(candidates.index[0]) if len(candidates) == 1 else None


def baseline_selector(summary: pd.DataFrame) -> dict | None:
    """The (first) baseline row as a selector dict: method and its set parameters."""
    params = parameter_columns(summary)
    for group in reference_groups(summary):
        base = baseline_index(group)
        if base is not None:
            row = group.loc[base]
            return {"method": row["method"], **{p: row[p] for p in params if pd.notna(row[p])}}
    return None


def significant(row: pd.Series, metric: str) -> bool:
    return row.get(f"p_{metric}_holm", math.nan) < SIGNIFICANT


def best(group: pd.DataFrame, metric: str, base: int | None) -> int | None:
    """The row with the best ``metric`` where it is significantly better than the runner-up:
    Holm p < 0.05 where one of the two is the baseline, else non-overlapping intervals (a
    stricter criterion than a paired test, for want of a test between the two)."""
    direction = METRICS[metric].better
    runs = group[group["method"] != "human"].dropna(subset=[metric])
    if not direction or len(runs) < 2:
        return None
    ranked = runs[metric].sort_values(ascending=direction < 0)
    first, second = ranked.index[0], ranked.index[1]
    if ranked.iloc[0] == ranked.iloc[1]:
        return None
    if base in (first, second):
        other = second if first == base else first
        return first if significant(group.loc[other], metric) else None
    low, high = f"{metric}_lo", f"{metric}_hi"
    if {low, high} <= set(group) and group.loc[[first, second], [low, high]].notna().all(
            axis=None):
        a, b = group.loc[first], group.loc[second]
        apart = a[low] > b[high] if direction > 0 else a[high] < b[low]
        return first if apart else None
    return None


def cell(row: pd.Series, metric: str, bold: bool = False) -> str:
    """``\\summarycell{48.1}{[45.2, 50.3]}`` (MAUVE: ``{$\\pm$2.0}``): the value over its
    interval in small type."""
    m = METRICS[metric]
    value = row.get(metric)
    if pd.isna(value):
        return ""
    text = number(value * m.scale, m.decimals)
    text = f"\\textbf{{{text}}}" if bold else text
    std, low, high = row.get(f"{metric}_std"), row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    if pd.notna(std):
        return f"\\summarycell{{{text}}}{{$\\pm${number(std * m.scale, m.decimals)}}}"
    if pd.notna(low) and pd.notna(high):
        return (f"\\summarycell{{{text}}}{{[{number(low * m.scale, m.decimals)}, "
                f"{number(high * m.scale, m.decimals)}]}}")
    return text


def delta_cell(row: pd.Series, metric: str) -> str:
    """``$+1.2^{*}$``: Δ against the baseline, starred where Holm-significant."""
    m = METRICS[metric]
    delta = row.get(f"delta_{metric}")
    if pd.isna(delta):
        return ""
    star = "^{*}" if significant(row, metric) else ""
    return f"${delta * m.scale:+.{m.decimals}f}{star}$"


def minimum_detectable(summary: pd.DataFrame, metric: str, level: float = 0.95) -> float:
    """``analysis.uncertainty.minimum_detectable``: the one computation summary.md, the
    report and this caption show (``level``, the intervals', does not enter it)."""
    return uncertainty.minimum_detectable(summary, metric)


def significance_floor(summary: pd.DataFrame, alpha: float = SIGNIFICANT) -> str | None:
    """A note where no Δ can be marked significant, whatever its size: a paired sign-flip test
    over n prompts cannot give p below 2 / 2^n (only the two all-or-nothing swaps are as
    extreme as the observed Δ), and Holm multiplies the smallest p of the table by its m tests.
    (The resampled test's own floor, 1 / (B + 1), stays below α / m: analysis.uncertainty draws
    B >= 20 x the tests.) None where every row's n can reach α."""
    tests = int(sum(summary[c].notna().sum() for c in summary if c.endswith("_holm")))
    tested = summary[[c for c in summary if c.endswith("_holm")]].notna().any(axis=1)
    if not tests or not tested.any():
        return None
    rows = summary[tested]
    seeds = rows["seeds"] if "seeds" in rows else pd.Series(1, index=rows.index)
    prompts = sorted({round(n / s) for n, s in zip(rows["n"], seeds, strict=True)
                      if pd.notna(n) and pd.notna(s) and s})
    blocked = [n for n in prompts if tests * 2.0 ** (1 - n) >= alpha]
    if not blocked:
        return None
    needed = math.floor(1 + math.log2(tests / alpha)) + 1  # smallest n: m x 2^(1-n) < alpha
    n = max(blocked)
    which = "No Δ" if blocked == prompts else f"No Δ of the rows over n <= {n} prompts"
    return (f"{which} can be marked significant at this n, whatever its size: over n = {n} "
            f"prompts the smallest p a sign-flip test can give is 2/2^{n} = {2.0 ** (1 - n):.2g}"
            f", and Holm over the table's m = {tests} tests makes it {tests * 2.0 ** (1 - n):.2g}"
            f" >= {alpha:g}. It takes n >= {needed} prompts (or fewer tests).")


def caption(summary: pd.DataFrame, metrics: list[str], resamples: int, level: float,
            baselines: list[str]) -> str:
    runs = summary[summary["method"] != "human"]
    prompts = sorted({round(n / s) for n, s in zip(runs["n"], runs.get(
        "seeds", pd.Series(1, index=runs.index)), strict=True) if pd.notna(n) and s})
    seeds = sorted({int(s) for s in runs.get("seeds", pd.Series([1])).dropna()})
    seed_text = "--".join(map(str, sorted({seeds[0], seeds[-1]}))) if seeds else "1"
    scaled = [METRICS[m].header for m in metrics if METRICS[m].scale == 100]
    tests = sum(int(summary[c].notna().sum()) for c in summary if c.endswith("_holm"))
    percent = f"{level * 100:g}\\%"
    text = [f"Each configuration over the same $n = {', '.join(map(str, prompts))}$ prompts "
            f"({seed_text} generation seed{'' if seed_text == '1' else 's'} each)."
            ] if prompts else []
    if scaled:
        text.append(f"{', '.join(scaled)} $\\times$ 100.")
    if "mauve" in metrics:
        text.append("MAUVE: mean $\\pm$ std over k-means and generation seeds;")
    text.append(f"other values with {percent} percentile bootstrap intervals over prompts "
                f"({resamples} resamples, a prompt's seeds together).")
    if baselines:
        names = " and ".join(dict.fromkeys(baselines))
        text.append(f"$\\Delta$: paired difference to {names} on the same "
                    f"prompts; $^{{*}}$: Holm-adjusted $p < {SIGNIFICANT:g}$ (paired sign-flip "
                    f"tests; MAUVE: swap test) over all {tests} tests of the table.")
    text.append("Bold: the best value, only where it differs significantly from the runner-up.")
    mde = {m: uncertainty.detectable(summary, m, METRICS[m].scale) for m in metrics
           if f"se_{m}" in summary}
    if mde:
        text.append("Minimum detectable $\\Delta$ at this $n$ (80\\% power, two-sided 5\\%, "
                    "2.8 $\\times$ the median bootstrap SE of $\\Delta$): "
                    + ", ".join(f"{tex(METRICS[m].header)} {v}" for m, v in mde.items())
                    + ".")
    return " ".join(text)


def paper_table(summary: pd.DataFrame, metrics: list[str], resamples: int = 10000,
                level: float = 0.95) -> str:
    """The compact layout of ``summary.tex`` (a ``table`` float with a caption and a label)."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"table.latex.metrics={metrics}: unknown metric(s) {unknown}; choose "
                         f"from {', '.join(METRICS)}.")
    missing = [m for m in metrics if m not in summary or summary[m].isna().all()]
    if missing:
        log.warning("summary.tex: no values for %s in this analysis: left out", missing)
    metrics = [m for m in metrics if m not in missing]
    params = parameter_columns(summary)
    lines, baselines = [], []
    groups = reference_groups(summary)
    columns = 1 + 2 * len(metrics)
    for number_, group in enumerate(groups):
        base = baseline_index(group)
        if base is not None:
            baselines.append(label(group.loc[base], params))
        bold = {m: best(group, m, base) for m in metrics}
        if number_:
            lines.append("\\midrule")
        if len(groups) > 1:
            first = group.iloc[0]
            lines.append(f"\\multicolumn{{{columns}}}{{@{{}}l}}{{\\emph{{{tex(str(first['model']))}"
                         f", {tex(str(first['dataset']))}, {first['max_new_tokens']:g} "
                         "tokens}}\\\\")
        for index, row in group.iterrows():
            if row["method"] == "human":
                lines.append("\\midrule")
                name = "Human"
            else:
                name = label(row, params)  # the caption names the baseline; its Δs are ---
            cells = [name]
            for m in metrics:
                delta = "---" if index == base else delta_cell(row, m)
                cells += [cell(row, m, bold[m] == index), delta]
            lines.append(" & ".join(cells) + " \\\\")
    arrows = {1: "$\\uparrow$", -1: "$\\downarrow$", 0: ""}
    header = " & ".join(["Configuration", *[f"{tex(METRICS[m].header)}{arrows[METRICS[m].better]}"
                                            " & $\\Delta$" for m in metrics]])
    return "\n".join([
        "% The paper table of python -m analysis: \\input into a document with \\usepackage"
        "{booktabs}.",
        "\\begin{table}[t]", "\\centering", "\\small", "\\setlength{\\tabcolsep}{4pt}",
        "\\providecommand{\\summarycell}[2]{\\begin{tabular}[t]{@{}r@{}}#1\\\\[-2pt]"
        "{\\scriptsize #2}\\end{tabular}}",
        f"\\begin{{tabular}}{{@{{}}l{'rr' * len(metrics)}@{{}}}}", "\\toprule",
        header + " \\\\", "\\midrule", *lines,
        "\\bottomrule", "\\end{tabular}",
        f"\\caption{{{caption(summary, metrics, resamples, level, baselines)}}}",
        "\\label{tab:decoding}", "\\end{table}", ""])


def stacked(text: str) -> str:
    """A cell of ``summary.md`` (``48.10 [45.20, 50.30] *``, ``63.23 ± 11.77``) as LaTeX: its
    value (and marks) over its interval, which halves the column; other cells as they are."""
    parts = re.fullmatch(r"(\S+) (\[[^\]]*\]|± \S+)(.*)", text)
    if parts is None:
        return tex(text)
    value, spread, marks = parts.groups()
    return f"\\fullcell{{{tex(value + marks)}\\\\{{}}{tex(spread)}}}"


def full_table(summary: pd.DataFrame, rendered: pd.DataFrame) -> str:
    """Every column of ``summary.md`` (``rendered``, strings; its rows ``summary``'s), escaped:
    the columns that say what a row is as one configuration label, each value over its
    interval, headers of two words on two lines. For an appendix on a landscape page (where a
    demo-size sweep's table fits; wider ones: ``\\resizebox``)."""
    described = list(rendered.columns[: list(rendered.columns).index("n")])
    params = parameter_columns(summary)
    names = ["Human" if row["method"] == "human" else label(row, params)
             for _, row in summary.iterrows()]
    cells = [[name, *(stacked(str(v)) for v in row)] for name, row in zip(
        names, rendered.drop(columns=described).itertuples(index=False), strict=True)]
    columns = ["Configuration", *rendered.drop(columns=described).columns]
    align = "l" + "r" * (len(columns) - 1)
    rows = [" & ".join(row) + " \\\\" for row in cells]
    headers = [header_lines(c) for c in map(str, columns)]
    return "\n".join([
        "% Every column of summary.md: \\input into a document with \\usepackage{booktabs}; "
        "wide: it fits a landscape page",
        "% (\\usepackage[landscape]{geometry}) at a demo-size sweep; for more columns, wrap the "
        "tabular in \\resizebox{\\linewidth}{!}{...}.",
        "\\begin{table}[p]", "\\centering", "\\tiny", "\\setlength{\\tabcolsep}{2pt}",
        "\\providecommand{\\fullcell}[1]{\\begin{tabular}[t]{@{}r@{}}#1\\end{tabular}}",
        f"\\begin{{tabular}}{{{align}}}", "\\toprule",
        " & ".join(headers) + " \\\\", "\\midrule", *rows,
        "\\bottomrule", "\\end{tabular}",
        "\\caption{Every configuration and metric; see summary.csv for all numbers.}",
        "\\label{tab:decoding-full}", "\\end{table}", ""])


def header_lines(header: str, width: int = 14) -> str:
    """A header of several words on several lines: its first word alone (``Δ``, the metric's
    short name), the rest wrapped at ``width`` characters (``Δ MAUVE (paired, shared
    codebook)`` would otherwise set the column's width)."""
    first, _, rest = header.partition(" ")
    if not rest:
        return tex(header)
    lines = [first, *textwrap.wrap(rest, width, break_long_words=False)]
    return "\\fullcell{" + "\\\\{}".join(tex(line) for line in lines) + "}"


def samples_tex(prompts: list[SamplePrompt]) -> str:
    """Example generations side by side: per prompt, the human continuation and each group of
    configurations with identical texts, each under its label on a line of its own (so a text
    that departs at its first word, bold, never runs into the label); the prefix shared with
    the baseline is grey (with xcolor loaded) and the first word where a text departs from it
    is bold."""
    lines = [
        "% Example generations of python -m analysis: \\input into a document. Each text under",
        "% its label; the prefix a text shares with the baseline's is grey where xcolor is",
        "% loaded; the first word where it departs is bold.",
        "\\makeatletter",
        "\\providecommand{\\sampleshared}[1]{\\@ifpackageloaded{xcolor}{\\textcolor{gray}{#1}}"
        "{#1}}",
        "\\makeatother",
        "\\providecommand{\\sampledeparts}[1]{\\textbf{#1}}",
        "\\providecommand{\\samplelabel}[1]{\\textsc{#1}\\newline}",
    ]
    for prompt in prompts:
        lines += [f"\\paragraph{{Prompt {prompt.prompt_id} (seed {prompt.seed}).}} "
                  f"\\textit{{{tex(prompt.prompt)}}}", "\\begin{itemize}",
                  f"\\item[--] \\samplelabel{{Human}} {tex(prompt.reference)}"]
        for group in prompt.groups:
            names = ", ".join(label(c, list(c)[1:]) for c in group.configurations)
            names += " (baseline)" if group.is_baseline else ""
            text = group.text
            if group.departs is None:
                body = tex(text)
            else:
                start, end = group.departs
                body = (f"\\sampleshared{{{tex(text[:start])}}}"
                        f"\\sampledeparts{{{tex(text[start:end])}}}{tex(text[end:])}")
            lines.append(f"\\item[--] \\samplelabel{{{names}}} {body}")
        lines.append("\\end{itemize}")
    return "\n".join(lines) + "\n"


def write_samples(summary: pd.DataFrame, jobs: list[Job], out: Path, cfg: LatexConfig) -> None:
    """``samples.tex``: the first ``cfg.samples`` prompts side by side."""
    prompts = sample_prompts(jobs, cfg.samples, baseline_selector(summary))
    (out / "samples.tex").write_text(samples_tex(prompts))


def write_latex(summary: pd.DataFrame, rendered: pd.DataFrame, out: Path, cfg: LatexConfig,
                resamples: int = 10000, level: float = 0.95) -> None:
    """``summary.tex`` (the paper table; ``resamples`` and ``level`` of the bootstrap for its
    caption) and ``summary_full.tex`` (every column)."""
    (out / "summary.tex").write_text(paper_table(summary, list(cfg.metrics), resamples, level))
    (out / "summary_full.tex").write_text(full_table(summary, rendered))
