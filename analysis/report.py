"""``report.html``: one self-contained file (inline CSS and script, images as data URIs, a
Content-Security-Policy that forbids any request) to open on an offline cluster. It holds the
table with intervals and Δs (sortable by clicking a column; the paper table's metrics first, the
rest folded, the configuration column fixed when it scrolls), the notes with the minimum
detectable Δ (and whether any Δ can reach significance at this n), the plots, the plan's tables
where there is one, and a sample browser: per prompt the
prompt, the human continuation and every configuration's continuation side by side, identical
texts under one heading, the prefix shared with the baseline grey and the first word piece where
a text departs from it marked."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pandas as pd
from markdown_it import MarkdownIt

from analysis import uncertainty
from analysis.latex import (
    METRICS,
    LatexConfig,
    baseline_index,
    baseline_selector,
    best,
    label,
    minimum_detectable,
    parameter_columns,
    reference_groups,
    significance_floor,
    significant,
)
from analysis.load import Job
from analysis.samples import SamplePrompt, sample_prompts

SHOWN = ["mauve", "diversity", "rep_2", "coherence", "perplexity", "topk_identical_rate"]  # as .md


@dataclass
class ReportConfig:
    """``report`` in ``conf/analysis.yaml``."""

    samples: int = 10  # prompts in the sample browser

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError(f"report.samples={self.samples}: the number of prompts in the "
                             "sample browser must be >= 0.")


@dataclass
class Cell:
    text: str
    detail: str = ""  # the interval, in small type
    sort: float | str = math.nan
    strong: bool = False
    title: str = ""


def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def metric_cell(row: pd.Series, metric: str, bold: bool) -> Cell:
    m, value = METRICS[metric], row.get(metric)
    if pd.isna(value):
        return Cell("")
    scaled = value * m.scale
    std, low, high = row.get(f"{metric}_std"), row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    detail = ""
    if pd.notna(std):
        detail = f"± {_number(std * m.scale, m.decimals)}"
    elif pd.notna(low) and pd.notna(high):
        detail = f"[{_number(low * m.scale, m.decimals)}, {_number(high * m.scale, m.decimals)}]"
    return Cell(_number(scaled, m.decimals), detail, scaled, bold)


def delta_cell(row: pd.Series, metric: str) -> Cell:
    m, delta = METRICS[metric], row.get(f"delta_{metric}")
    if pd.isna(delta):
        return Cell("")
    low, high = row.get(f"delta_{metric}_lo"), row.get(f"delta_{metric}_hi")
    detail = (f"[{low * m.scale:+.{m.decimals}f}, {high * m.scale:+.{m.decimals}f}]"
              if pd.notna(low) and pd.notna(high) else "")
    star = significant(row, metric)
    p, holm = row.get(f"p_{metric}"), row.get(f"p_{metric}_holm")
    title = f"p = {p:.4g}, Holm-adjusted {holm:.4g}" if pd.notna(p) and pd.notna(holm) else ""
    return Cell(f"{delta * m.scale:+.{m.decimals}f}" + (" *" if star else ""), detail,
                delta * m.scale, star, title)


@dataclass
class Header:
    text: str
    folded: bool = False  # hidden until the reader asks for every column


def table(summary: pd.DataFrame, first: list[str] | None = None,
          ) -> tuple[list[Header], list[dict], list[dict]]:
    """Headers, the configurations' rows and the human rows, each row a dict with its label,
    whether it is the baseline, and its cells. The metrics of ``first`` (the paper table's,
    ``table.latex.metrics``) come first; the rest of ``SHOWN`` follow, folded."""
    first = LatexConfig().metrics if first is None else first
    shown = [*dict.fromkeys([*first, *SHOWN])]
    metrics = [m for m in shown if m in summary and summary[m].notna().any()]
    params = parameter_columns(summary)
    headers = [Header("Configuration"), Header("n"), Header("seeds")]
    for m in metrics:
        folded = m not in first
        headers.append(Header(METRICS[m].header + (" ×100" if METRICS[m].scale == 100 else ""),
                              folded))
        if f"delta_{m}" in summary:
            headers.append(Header(uncertainty.delta_label(m, METRICS[m].header), folded))
    runs, humans = [], []
    for group in reference_groups(summary):
        base = baseline_index(group)
        bold = {m: best(group, m, base) for m in metrics}
        for index, row in group.iterrows():
            human = row["method"] == "human"
            name = "Human" if human else label(row, params, latex=False)
            if len(reference_groups(summary)) > 1:
                name += f" · {row['dataset']}, {row['max_new_tokens']:g} tokens"
            seeds = math.nan if human else row.get("seeds", math.nan)
            cells = [Cell(name, sort=name), Cell(f"{row['n']:g}", sort=row["n"]),
                     Cell("" if pd.isna(seeds) else f"{seeds:g}", sort=seeds)]
            for m in metrics:
                cells.append(metric_cell(row, m, bold[m] == index))
                if f"delta_{m}" in summary:
                    cells.append(delta_cell(row, m))
            (humans if human else runs).append(
                {"label": name, "baseline": index == base, "cells": cells})
    return headers, runs, humans


# Control characters (a random model's bytes) shown as their Unicode pictures (␍ for \r): the
# HTML parser would drop or rewrite them; one character for one, so offsets still hold.
VISIBLE = {code: 0x2400 + code for code in range(32) if chr(code) not in "\n\t"} | {127: 0x2421}


def visible(text: str) -> str:
    return text.translate(VISIBLE)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def plan_html(markdown: str) -> str:
    """``plan.md`` as HTML: its pipe tables as tables (the same columns), its notes as a list;
    any HTML in it is shown as text."""
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)


def render(summary: pd.DataFrame, samples: list[SamplePrompt], plots: list[Path], notes: list[str],
           title: str, plan: str | None = None, first: list[str] | None = None,
           study: str | None = None) -> str:
    """The page; ``plan``: the text of ``plan.md``; ``first``: the metrics shown unfolded;
    ``study``: the text of ``study.md``."""
    headers, runs, humans = table(summary, first)
    if not any("minimum detectable" in note.lower() for note in notes):
        mde = {m: minimum_detectable(summary, m, 0.95) * METRICS[m].scale for m in SHOWN
               if m in summary}
        mde = {m: v for m, v in mde.items() if pd.notna(v)}
        if mde:
            notes = [*notes, "Minimum detectable Δ at this n (80% power, two-sided 5%, from the Δ "
                     "intervals): " + ", ".join(f"{METRICS[m].header} {v:.3g}"
                                                 for m, v in mde.items())]
    floor = significance_floor(summary)
    if floor:
        notes = [*notes, floor]
    plan = plan_html(plan) if plan else None
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters["visible"] = visible
    environment.filters["labels"] = lambda selectors: [label(s, list(s)[1:], latex=False)
                                                       for s in selectors]
    return environment.from_string(TEMPLATE).render(
        title=title, headers=headers, runs=runs, humans=humans, notes=notes,
        folded=[h.text for h in headers if h.folded and not h.text.startswith("Δ")],
        plots=[(p.stem.replace("_", " "), data_uri(p)) for p in plots], plan=plan,
        study=plan_html(study) if study else None, samples=samples,
        isnan=lambda v: isinstance(v, float) and math.isnan(v), json=json)


def write_report(summary: pd.DataFrame, jobs: list[Job], out: Path, cfg: ReportConfig,
                 plots: list[Path], notes: list[str], plan: str | None = None,
                 latex: LatexConfig | None = None, study: str | None = None) -> Path:
    """``out/report.html``; ``plan``: the text of plan.md; the metrics of ``latex`` (the paper
    table's) come first in the table; ``study``: the text of a study's ``study.md``
    (``python -m harness.study``), where one ran in the sweep dir."""
    samples = sample_prompts(jobs, cfg.samples, baseline_selector(summary))
    path = out / "report.html"
    path.write_text(render(summary, samples, plots, notes, out.name, plan,
                           list((latex or LatexConfig()).metrics), study))
    return path


TEMPLATE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline';
               script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Decoding comparison: {{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.scroll { overflow-x: auto; }
table.summary { border-collapse: separate; border-spacing: 0;
  font-variant-numeric: tabular-nums; }
table.summary th, table.summary td { padding: .3em .6em; text-align: right;
  border-bottom: 1px solid #eee; white-space: nowrap; vertical-align: top; }
table.summary th:first-child, table.summary td:first-child { text-align: left; }
table.summary th { cursor: pointer; user-select: none; background: #f6f6f8;
  position: sticky; top: 0; z-index: 1; }
/* the configuration stays in view when the table scrolls sideways */
table.summary td:first-child { position: sticky; left: 0; background: #fff; z-index: 1;
  box-shadow: 1px 0 0 #ddd; }
table.summary th:first-child { left: 0; z-index: 2; box-shadow: 1px 0 0 #ddd; }
table.summary.folded .folded { display: none; }
label.columns { color: #555; }
table.summary th[aria-sort=ascending]::after { content: " ▲"; }
table.summary th[aria-sort=descending]::after { content: " ▼"; }
table.summary tr.baseline td { background: #eef4ff; }
table.summary tbody.human td { border-top: 2px solid #999; font-style: italic; }
.detail { display: block; color: #777; font-size: .78em; }
td.strong { font-weight: 700; }
ul.notes { color: #444; max-width: 75em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { margin: 0; flex: 1 1 520px; max-width: 760px; }
.plots img { width: 100%; }
#plan-section table, #study-section table { border-collapse: collapse; margin: .5em 0 1em; }
#plan-section th, #plan-section td, #study-section th, #study-section td {
  padding: .25em .6em; border-bottom: 1px solid #eee;
  vertical-align: top; max-width: 28em; }
#plan-section th, #study-section th { background: #f6f6f8; }
#plan-section td:first-child { white-space: nowrap; }
#plan-section code { font-size: .85em; overflow-wrap: anywhere; }
#plan-section ul { color: #444; max-width: 75em; }
section.prompt { margin: 1.5em 0; }
.prompt-text { background: #f6f6f8; padding: .5em .8em; border-radius: 4px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr));
  gap: .8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .4em .8em; }
.card.human { border-color: #2a7; } .card.baseline { border-color: #36c; }
.card h4 { margin: .2em 0 .4em; font-size: .9em; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
.shared { color: #9a9a9a; }
mark.departs { background: #ffe08a; color: inherit; border-radius: 2px; }
mark.departs:empty::after { content: "■"; color: #c60; }
.legend { color: #555; }
</style>
</head>
<body>
<h1>Decoding comparison: {{ title }}</h1>
<nav><a href="#table">Table</a>{% if plots %} · <a href="#plots">Plots</a>{% endif %}
{%- if plan %} · <a href="#plan">Plan</a>{% endif %}
{%- if study %} · <a href="#study">Study</a>{% endif %} · <a href="#samples">Samples</a></nav>

<h2 id="table">Table</h2>
<p class="legend">Click a column to sort. Small type: the interval (MAUVE: ± std); Δ against the
baseline (blue row), * where Holm-significant (hover for p); bold: the best value where it is
significantly better than the runner-up.

{%- if folded %}
<label class="columns"><input type="checkbox" id="all-columns"> every column (also
{{ folded | join(", ") }})</label>{% endif %}</p>
<div class="scroll">
<table class="summary folded">
<thead><tr>{% for header in headers %}<th{% if header.folded %} class="folded"{% endif %}>
{{- header.text }}</th>{% endfor %}</tr></thead>
{% for body, rows in [("runs", runs), ("human", humans)] %}
<tbody class="{{ body }}">
{% for row in rows %}
<tr data-label="{{ row.label }}"{% if row.baseline %} class="baseline"{% endif %}>
{% for cell in row.cells %}{% set classes = [] %}
{%- if cell.strong %}{% set classes = classes + ["strong"] %}{% endif %}
{%- if headers[loop.index0].folded %}{% set classes = classes + ["folded"] %}{% endif -%}
<td data-sort="{{ '' if isnan(cell.sort) else cell.sort }}"
  {%- if classes %} class="{{ classes | join(' ') }}"{% endif %}
  {%- if cell.title %} title="{{ cell.title }}"{% endif %}>
{{- cell.text }}{% if loop.first and row.baseline %} (baseline){% endif %}
{%- if cell.detail %}<span class="detail">{{ cell.detail }}</span>{% endif %}</td>{% endfor %}
</tr>
{% endfor %}
</tbody>
{% endfor %}
</table>
</div>
<ul class="notes">{% for note in notes %}<li>{{ note }}</li>{% endfor %}</ul>

{% if plots %}<h2 id="plots">Plots</h2>
<div class="plots">{% for name, uri in plots %}
<figure><img src="{{ uri }}" alt="{{ name }}"><figcaption>{{ name }}</figcaption></figure>
{% endfor %}</div>{% endif %}

{% if plan %}<h2 id="plan">Plan</h2>
<div id="plan-section">{{ plan | safe }}</div>{% endif %}

{% if study %}<h2 id="study">Study: decisions look by look</h2>
<div id="study-section">{{ study | safe }}</div>{% endif %}

<h2 id="samples">Samples</h2>
<p class="legend">The first {{ samples | length }} prompts, one seed. Configurations with identical
texts share a card; grey: the prefix a text shares with the baseline's,
<mark class="departs">marked</mark>:
the first word where it departs (■: it stops where the baseline goes on).</p>
{% for sample in samples %}
<section class="prompt" data-prompt-id="{{ sample.prompt_id }}" data-seed="{{ sample.seed }}">
<h3>Prompt {{ sample.prompt_id }} <small>(seed {{ sample.seed }}, {{ sample.references.dataset }},
{{ sample.references.max_new_tokens }} tokens)</small></h3>
<p class="prompt-text text">{{ sample.prompt | visible }}</p>
<div class="cards">
<div class="card human" data-labels='["Human"]'><h4>Human</h4>
<p class="text">{{ sample.reference | visible }}</p></div>
{% for group in sample.groups %}{% set labels = group.configurations | labels %}
<div class="card{% if group.is_baseline %} baseline{% endif %}"
     data-labels="{{ json.dumps(labels) }}">
<h4>{{ labels | join(" = ") }}{% if group.is_baseline %} (baseline){% endif %}</h4>
{% if group.departs is none %}<p class="text">{{ group.text | visible }}</p>
{% else %}<p class="text"><span class="shared">{{ group.text[:group.departs[0]] | visible }}</span>
{#- #}<mark class="departs">{{ group.text[group.departs[0]:group.departs[1]] | visible }}</mark>
{#- #}<span class="rest">{{ group.text[group.departs[1]:] | visible }}</span></p>
{% endif %}
</div>
{% endfor %}
</div>
</section>
{% endfor %}

<script>
document.getElementById("all-columns")?.addEventListener("change", event =>
  document.querySelector("table.summary").classList.toggle("folded", !event.target.checked));
document.querySelectorAll("table.summary th").forEach((th, column) => {
  th.addEventListener("click", () => {
    const body = th.closest("table").querySelector("tbody.runs");
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    th.closest("tr").querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const key = row => row.children[column].dataset.sort;
    const rows = [...body.rows].sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === "" || y === "") return (x === "") - (y === "");  // blanks last
      const [p, q] = [Number(x), Number(y)];
      const order = isNaN(p) || isNaN(q) ? x.localeCompare(y) : p - q;
      return ascending ? order : -order;
    });
    body.append(...rows);
  });
});
</script>
</body>
</html>
"""
