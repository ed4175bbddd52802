"""What a researcher takes away, checked by its real consumers: pdflatex compiles summary.tex,
summary_full.tex and samples.tex (and summary.tex fits the text width); headless Chromium loads
report.html offline without an error or a request, with every configuration, the human row and
the divergence marks where the records first differ. The unit tests check the pieces against
hand-computed values."""

import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.__main__ import analyse, load_config
from analysis.latex import METRICS, best, label, paper_table, tex
from analysis.load import find_jobs
from analysis.samples import departure, selector_of
from harness.sweep import main as run_sweep
from tests.conftest import TINY

PDFLATEX = shutil.which("pdflatex")
CHROMIUM = shutil.which("chromium")
needs_tex = pytest.mark.skipif(PDFLATEX is None, reason=(
    "pdflatex not found: install texlive-latex-base and texlive-latex-recommended "
    "(bash .ci/system-deps)"))
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason=(
    "chromium not found: install Debian's chromium (bash .ci/system-deps)"))


def as_shown(text: str) -> str:
    """As report.html shows a text: control characters as their Unicode pictures."""
    return "".join(chr(0x2400 + ord(c)) if ord(c) < 32 and c not in "\n\t" else
                   "\u2421" if c == "\x7f" else c for c in text)


def first_difference(text: str, base: str) -> int:
    for i, (a, b) in enumerate(zip(text, base, strict=False)):
        if a != b:
            return i
    return min(len(text), len(base))


def assert_whole_piece(text: str, start: int, end: int, first: int) -> None:
    """The mark is the whole word (or one punctuation mark, with the whitespace before it where
    that differs; or the text's trailing whitespace) holding the first difference: no word goes
    on across either of its ends."""
    mark = text[start:end]
    assert re.fullmatch(r"\s*\w+|\s*[^\w\s]|", mark) or (end == len(text) and mark.isspace()), mark
    assert start == first or re.fullmatch(r"\w+|\s+", text[start:first])
    word = re.compile(r"\w")
    assert not (0 < start < len(text) and word.match(text[start - 1]) and word.match(text[start]))
    assert not (0 < end < len(text) and word.match(text[end - 1]) and word.match(text[end]))


def test_departure_marks_the_first_differing_word_by_hand():
    assert departure("the cat sat", "the car sat") == (4, 7)  # "cat"; "the " is shared
    assert departure("the cat sat", "the cat") == (7, 11)  # " sat": the space differs too
    assert departure("the cat", "the cat sat") == (7, 7)  # stops where the baseline goes on
    assert departure("ab.cd", "ab,cd") == (2, 3)  # a punctuation mark is a piece of its own
    assert departure("same", "same") is None


@given(st.text("ab .\n", max_size=12), st.text("ab .\n", max_size=12))
def test_departure_holds_the_first_difference_and_a_shared_prefix(text, base):
    marked = departure(text, base)
    if text == base:
        assert marked is None
        return
    start, end = marked
    first = first_difference(text, base)
    assert text[:start] == base[:start]
    assert start <= first and (first < end or start == end == first == len(text))
    assert_whole_piece(text, start, end, first)


def test_label_names_the_method_and_its_set_parameters():
    row = {"method": "locally_typical_distance", "alpha": 0.7, "top_k": 10.0, "top_p": math.nan,
           "temperature": 1.0}
    params = ["alpha", "top_k", "top_p", "temperature"]
    assert label(row, params) == "LTD ($\\alpha{=}0.7$, $k{=}10$)"
    assert label(row, params, latex=False) == "LTD (α=0.7, k=10)"
    assert label({"method": "top_p", "top_p": 0.95, "temperature": 0.7}, ["top_p", "temperature"],
                 latex=False) == "top-p (p=0.95, T=0.7)"


def test_tex_escapes_what_latex_treats_as_syntax():
    assert tex("top_k 50% & #1 {x}") == r"top\_k 50\% \& \#1 \{x\}"
    assert tex("Δ ± é") == r"\ensuremath{\Delta} \ensuremath{\pm} \'e"
    assert tex("\ufffd\x17") == r"{\bfseries ?}{\bfseries ?}"


def summary_of(values: dict[str, list[float]], holm: list[float]) -> pd.DataFrame:
    """Three configurations; the first is the baseline (no Δ)."""
    frame = pd.DataFrame({"method": ["top_k", "a", "b"], "top_k": [10.0, 1.0, 2.0],
                          "n": [10] * 3, **values})
    frame["delta_coherence"] = [math.nan, 0.1, 0.2]
    frame["p_coherence_holm"] = holm
    return frame


def test_bold_only_where_the_best_beats_the_runner_up_significantly():
    base = 0
    # b is best and a runner-up: their intervals are apart -> bold; overlapping -> none.
    apart = summary_of({"coherence": [0.1, 0.3, 0.6], "coherence_lo": [0.0, 0.2, 0.5],
                        "coherence_hi": [0.2, 0.4, 0.7]}, [math.nan, 0.01, 0.01])
    assert best(apart, "coherence", base) == 2
    overlapping = apart.assign(coherence_hi=[0.2, 0.55, 0.7])
    assert best(overlapping, "coherence", base) is None
    # the runner-up is the baseline: the best's Holm p decides
    runner_up_base = summary_of({"coherence": [0.5, 0.1, 0.6]}, [math.nan, 0.01, 0.2])
    assert best(runner_up_base, "coherence", base) is None
    assert best(runner_up_base.assign(p_coherence_holm=[math.nan, 0.5, 0.01]), "coherence",
                base) == 2
    assert METRICS["perplexity"].better == 0  # no "best" perplexity: lower is not better


def test_bad_settings_are_named_when_the_config_loads():
    with pytest.raises(ValueError, match=r"table.latex.metrics=.*'cohesion'.*choose from"):
        load_config(["table.latex.metrics=[coherence,cohesion]"])
    with pytest.raises(ValueError, match=r"report.samples=-1: .* must be >= 0"):
        load_config(["report.samples=-1"])
    frame = summary_of({"coherence": [0.1, 0.2, 0.3]}, [math.nan, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"table.latex.metrics=.*'cohesion'.*choose from"):
        paper_table(frame, ["coherence", "cohesion"])


def compile_latex(directory: Path, name: str, body: str, preamble: str = "") -> str:
    """pdflatex on a plain article with booktabs (and ``preamble``) that holds ``body``; the
    log (fails on any LaTeX error)."""
    document = directory / f"{name}.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n"
                        f"{preamble}\n\\begin{{document}}\n{body}\n\\end{{document}}\n")
    result = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error",
                             document.name], cwd=directory, capture_output=True, text=True,
                            timeout=120)
    log = (directory / f"{name}.log").read_text(errors="replace")
    errors = [line for line in log.splitlines() if line.startswith("!")]
    assert result.returncode == 0 and not errors, f"{name}: {errors}\n{result.stdout[-2000:]}"
    return log


@pytest.mark.tex
@needs_tex
@settings(max_examples=3, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=20, max_size=20))
def test_any_text_compiles(tmp_path_factory, texts):
    compile_latex(tmp_path_factory.mktemp("tex"), "texts",
                  "\n\n".join(tex(t) for t in texts))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """The demo-like tiny sweep, analysed: (sweep dir, summary, jobs)."""
    out = tmp_path_factory.mktemp("sweep")
    run_sweep(["seed_comparison", *TINY, "dataset.limit=12", "generation.seeds=[0,1]",
               "generation.max_new_tokens=40", f"hydra.sweep.dir={out}"])
    summary = analyse([out], load_config(["metrics.coherence.scorer=tiny",
                                          "metrics.mauve.kmeans_seeds=2", "wandb=disabled"]))
    return out, summary, find_jobs([out])


@pytest.mark.slow
@pytest.mark.tex
@needs_tex
def test_latex_outputs_compile_and_the_paper_table_fits(analysed, tmp_path):
    out, summary, _ = analysed
    for name in ("summary", "summary_full", "samples"):
        # summary_full.tex on the landscape page it is for (geometry's default margins)
        preamble = "\\usepackage[landscape]{geometry}" if name == "summary_full" else ""
        log = compile_latex(tmp_path, name, f"\\input{{{out / name}.tex}}", preamble)
        if name != "samples":
            overfull = [float(w) for w in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide",
                                                     log)]
            assert all(w <= 1.0 for w in overfull), f"{name}.tex is {max(overfull)}pt too wide"
    paper = (out / "summary.tex").read_text()
    assert paper.count("\\\\") - paper.count("\\\\[") == len(summary) + 1  # header + each row
    for phrase in ("$n = 12$ prompts", "10000 resamples", "Holm-adjusted",
                   "Minimum detectable $\\Delta$", "\\label{tab:decoding}",
                   "LTD ($\\alpha{=}0.7$, $k{=}10$)"):
        assert phrase in paper, phrase


@pytest.mark.slow
@pytest.mark.browser
@needs_browser
def test_report_loads_offline_with_the_samples_marked(analysed, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    out, summary, jobs = analysed
    params = list(summary.columns[1 : list(summary.columns).index("n")])
    labels = [label(row, params, latex=False) for _, row in summary.iterrows()
              if row["method"] != "human"]
    texts = {label(selector_of(job), list(selector_of(job))[1:], latex=False):
             {(r["prompt_id"], r["seed"]): r["continuation"] for r in job.records}
             for job in jobs}
    url = (out / "report.html").resolve().as_uri()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context = browser.new_context(offline=True, viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url, wait_until="load")
        assert errors == []
        assert [r for r in requests if r != url and not r.startswith("data:")] == []
        # readable at 1400 px: the paper metrics' columns fit, the rest are folded, and the
        # configuration column stays in view when every column is shown and the table scrolls
        fits = "t => t.closest('.scroll').scrollWidth <= t.closest('.scroll').clientWidth"
        assert page.eval_on_selector("table.summary", fits)
        assert page.eval_on_selector("table.summary td", "td => getComputedStyle(td).position"
                                     ) == "sticky"
        assert not page.is_visible("table.summary th:text-is('PPL')")
        page.check("#all-columns")
        assert page.is_visible("table.summary th:text-is('PPL')")
        page.eval_on_selector(".scroll", "s => s.scrollLeft = s.scrollWidth")
        assert page.eval_on_selector("table.summary td", """td => {
          const box = td.getBoundingClientRect(); return box.left >= 0 && box.right <= 1400; }""")
        page.uncheck("#all-columns")
        # the plan: plan.md's tables as HTML tables, the same columns
        shown_plan = page.eval_on_selector_all("#plan-section table", """ts => ts.map(
          t => [...t.querySelectorAll('thead th')].map(th => th.textContent))""")
        assert shown_plan and shown_plan == markdown_headers((out / "plan.md").read_text())
        rows = page.eval_on_selector_all("table.summary tbody tr", "rs => rs.map(r => r.dataset"
                                         ".label)")
        assert sorted(rows) == sorted([*labels, "Human"])
        # sortable: a click on Coherence orders the configurations by it
        page.click("table.summary th:text-is('Coherence')")
        shown = page.eval_on_selector_all("tbody.runs tr", "rs => rs.map(r => r.dataset.label)")
        coherence = dict(zip(labels, summary.loc[summary["method"] != "human", "coherence"],
                             strict=True))
        assert [coherence[name] for name in shown] == sorted(coherence.values())
        cards = page.eval_on_selector_all("section.prompt .card:not(.human)", """cs => cs.map(
          c => ({prompt: +c.closest('section').dataset.promptId,
            seed: +c.closest('section').dataset.seed,
            labels: JSON.parse(c.dataset.labels), baseline: c.classList.contains('baseline'),
            text: c.querySelector('.text').textContent,
            shared: c.querySelector('.shared')?.textContent ?? null,
            mark: c.querySelector('mark.departs')?.textContent ?? null}))""")
        page.screenshot(path=tmp_path / "report.png", full_page=True)
        browser.close()
    assert cards and {c["prompt"] for c in cards} == set(range(10))
    marked = 0
    for card in cards:
        key = card["prompt"], card["seed"]
        base = next(c for c in cards if c["baseline"] and c["prompt"] == card["prompt"])
        base_text = texts[base["labels"][0]][key]
        (text,) = {texts[name][key] for name in card["labels"]}  # a card: one identical text
        assert card["text"] == as_shown(text)  # the DOM shows it one character for one
        assert not any(c["text"] == card["text"] for c in cards
                       if c["prompt"] == card["prompt"] and c is not card)
        if card["baseline"]:
            assert card["mark"] is None and "top-k (k=10)" in card["labels"]
            continue
        first = first_difference(text, base_text)
        start, end = len(card["shared"]), len(card["shared"]) + len(card["mark"])
        assert card["shared"] == as_shown(base_text[:start]) == as_shown(text[:start])
        assert card["mark"] == as_shown(text[start:end])
        assert start <= first and (first < end or start == end == first == len(text))
        assert_whole_piece(text, start, end, first)
        marked += 1
    assert marked > 0


def plan_markdown() -> str:
    """plan.md of two rows, two metrics and two δ, one entry with a command to escape."""
    from analysis.plan import render_plan

    plan = pd.DataFrame({
        "method": ["top_p", "top_p", "min_p", "min_p"] * 2, "top_p": [0.95, 0.95, None, None] * 2,
        "min_p": [None, None, 0.1, 0.1] * 2, "metric": ["coherence"] * 4 + ["diversity"] * 4,
        "delta": [0.01, 0.05] * 4, "n_needed": [412, 17, 300, 12] * 2,
        "extrapolation": [1.0] * 8, "seconds": [60.0] * 8,
        "status": ["planned", "the pilot's n = 24 already has this power", "planned",
                   "planned"] * 2,
        "command": ["python -m harness.sweep x", "", "python -m harness.sweep x <y>", ""] * 2})
    return render_plan(plan, ["method", "top_p", "min_p"], ["a plan note"])


def markdown_headers(markdown: str) -> list[list[str]]:
    """The header row of each pipe table of ``markdown``."""
    lines = markdown.splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line, below in zip(
        lines, [*lines[1:], ""], strict=True) if line.startswith("|") and below.startswith("|:")]


def html_headers(html: str) -> list[list[str]]:
    return [re.findall(r"<th[^>]*>(.*?)</th>", head, re.S)
            for head in re.findall(r"<thead>(.*?)</thead>", html, re.S)]


def test_report_is_one_file_with_the_plan_as_tables_and_no_outside_reference(tmp_path):
    import matplotlib.pyplot as plt

    from analysis.report import plan_html, render

    figure = tmp_path / "plot.png"
    plt.plot([0, 1]), plt.savefig(figure), plt.close()
    summary = summary_of({"coherence": [0.1, 0.2, 0.3]}, [math.nan, 0.01, 0.5]).assign(
        delta_coherence_lo=[math.nan, 0.0, 0.0], delta_coherence_hi=[math.nan, 0.2, 0.4],
        se_coherence=[math.nan, 0.05, 0.1])
    markdown = plan_markdown()
    html = render(summary, [], [figure], ["a note"], "sweep", markdown)
    assert re.findall(r"""(?:src|href)=["'](?!data:|#)""", html) == []
    assert html.count('src="data:image/png;base64,') == 1
    # the plan: plan.md's tables as HTML tables with the same columns, no markdown left over
    plan = html[html.index('id="plan-section"'):]
    assert markdown_headers(markdown) == [["configuration", "δ = 0.01", "δ = 0.05"]] * 2
    assert html_headers(plan) == markdown_headers(markdown)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", plan)
    assert cells[:3] == ["top_p top_p=0.95", "412 (1 min)",
                         "the pilot's n = 24 already has this power"]
    assert "<strong>coherence</strong>" in plan and "**" not in plan and "<pre>" not in plan
    assert "<li>a plan note</li>" in plan and "x &lt;y&gt;" in plan  # escaped
    assert "<script" not in plan_html("<script>alert(1)</script> | a |")
    # where the notes lack it: 2.8 x the median bootstrap SE of Δ, 2.8 x 0.075 (the one
    # computation summary.md and summary.tex show: analysis.uncertainty.minimum_detectable)
    assert "a note" in html and "Coherence 0.21" in html
    assert 'id="study"' not in html
    study = "| configuration | decision |\n|---|---|\n| top_p | different at look 2 <n=80> |"
    html = render(summary, [], [figure], ["a note"], "sweep", markdown, study=study)
    assert 'href="#study"' in html and "look 2 &lt;n=80&gt;" in html  # study.md, escaped
    assert "<td>top_p</td>" in html  # its table as a table


def test_the_paper_table_metrics_come_first_and_the_rest_fold():
    from analysis.report import table

    summary = summary_of({"coherence": [0.1, 0.2, 0.3], "mauve": [0.5, 0.6, 0.7],
                          "perplexity": [10.0, 11.0, 12.0]}, [math.nan, 0.01, 0.5])
    headers, runs, _ = table(summary, ["coherence", "mauve"])
    assert [(h.text, h.folded) for h in headers] == [
        ("Configuration", False), ("n", False), ("seeds", False), ("Coherence", False),
        ("Δ Coherence", False), ("MAUVE ×100", False), ("PPL", True)]
    assert [c.text for c in runs[1]["cells"]][3:] == ["0.200", "+0.100 *", "60.0", "11.0"]


@pytest.mark.parametrize(("prompts", "tests", "blocked"), [(8, 4, False), (8, 8, True),
                                                          (9, 8, False), (12, 140, True)])
def test_a_note_says_when_no_delta_can_reach_significance(prompts, tests, blocked):
    import itertools

    import numpy as np

    from analysis.latex import significance_floor
    from analysis.stats import holm

    # the exact sign-flip p of the most extreme data (every prompt's Δ of one sign), by
    # enumerating all 2^n flips, as the smallest p the test can give; Holm's smallest adjusted p
    difference = np.ones(prompts)
    sums = [abs(np.where(f, -difference, difference).sum())
            for f in itertools.product([0, 1], repeat=prompts)]
    smallest = np.mean(np.array(sums) >= difference.sum())
    assert smallest == 2 / 2**prompts
    holm_smallest = holm(np.array([smallest] * tests)).min()
    assert (holm_smallest >= 0.05) == blocked
    summary = pd.DataFrame({"method": ["top_k"] + ["top_p"] * tests, "n": 2 * prompts,
                            "seeds": 2, "p_coherence_holm": [math.nan] + [0.5] * tests})
    note = significance_floor(summary)
    assert (note is not None) == blocked
    if blocked:
        needed = next(n for n in itertools.count(prompts) if tests * 2 / 2**n < 0.05)
        assert f"n = {prompts} prompts" in note and f"m = {tests} tests" in note
        assert f"It takes n >= {needed} prompts" in note


def captured_figure(monkeypatch, draw):
    """The figure ``draw`` saves (matplotlib's own objects, to read back what it shows)."""
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    assert draw()
    (figure,) = saved
    return figure


def test_plots_are_in_the_table_units_with_the_promised_bands(monkeypatch, tmp_path):
    from analysis.plots import metric_vs_alpha

    summary = pd.DataFrame({
        "method": ["locally_typical_distance"] * 3 + ["human"], "alpha": [0.2, 0.5, 1.0, None],
        "top_k": [10.0, 10.0, 10.0, None], "n": [24] * 4,
        "mauve": [0.80, 0.85, 0.90, None], "mauve_std": [0.02, 0.01, 0.03, None],
        "coherence": [0.1, 0.2, 0.3, 0.4], "coherence_lo": [0.05, 0.15, 0.25, 0.3],
        "coherence_hi": [0.15, 0.25, 0.35, 0.5]})
    figure = captured_figure(monkeypatch, lambda: metric_vs_alpha(summary, "mauve",
                                                                  tmp_path / "m.png"))
    ax = figure.axes[0]
    assert ax.get_title() == "MAUVE vs alpha (bands: ± std)" and ax.get_ylabel() == "MAUVE (x100)"
    assert list(ax.lines[0].get_ydata()) == pytest.approx([80, 85, 90])  # x100, as the table
    (band,) = ax.collections
    vertices = band.get_paths()[0].vertices
    assert vertices[:, 1].min() == pytest.approx(78) and vertices[:, 1].max() == pytest.approx(93)
    figure = captured_figure(monkeypatch, lambda: metric_vs_alpha(summary, "coherence",
                                                                  tmp_path / "c.png"))
    ax = figure.axes[0]
    assert ax.get_title() == "Coherence vs alpha (bands: 95% intervals)"
    vertices = ax.collections[0].get_paths()[0].vertices
    assert vertices[:, 1].min() == pytest.approx(0.05) and vertices[:, 1].max() == pytest.approx(
        0.35)
    assert ax.lines[-1].get_ydata()[0] == 0.4 and ax.get_legend_handles_labels()[1] == [
        "LTD (k=10)", "human"]


def test_labels_of_coinciding_points_are_merged_and_never_overlap(monkeypatch, tmp_path):
    from analysis.plots import mauve_vs_diversity

    # 1 and 2 coincide to the pixel; 3 to 6 are close (their labels would collide); 7 is apart
    mauve = [0.800, 0.8000001, 0.860, 0.862, 0.864, 0.866, 0.2]
    diversity = [0.900, 0.9000001, 0.930, 0.931, 0.932, 0.933, 0.5]
    summary = pd.DataFrame({"method": ["top_k"] * 7, "top_k": range(1, 8), "n": 24,
                            "mauve": mauve, "mauve_std": 0.01, "diversity": diversity,
                            "diversity_lo": [d - 0.01 for d in diversity],
                            "diversity_hi": [d + 0.01 for d in diversity]})
    figure = captured_figure(monkeypatch, lambda: mauve_vs_diversity(summary, tmp_path / "p.png"))
    ax = figure.axes[0]
    texts = [t for t in ax.texts if t.get_text()]
    numbers = sorted(int(n) for t in texts for n in t.get_text().split(", "))
    assert numbers == list(range(1, 8)) and "1, 2" in [t.get_text() for t in texts]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert ax.get_xlabel() == "Diversity (x100, 95% interval)"


def string_settings_summary() -> pd.DataFrame:
    """Rows told apart by settings that are text (two models, two dtypes), as ``summarize``
    lays them out: the settings between the parameters and ``n``."""
    return pd.DataFrame({
        "method": ["top_k", "top_k", "top_p", "human"], "top_k": [10.0, 10.0, math.nan, math.nan],
        "top_p": [math.nan, math.nan, 0.95, math.nan],
        "model": ["tiny", "SmolLM2-135M", "tiny", "tiny"],
        "model.dtype": ["float32", "bfloat16", "bfloat16", math.nan],
        "n": [16, 16, 16, 8], "seeds": [2, 2, 2, math.nan],
        "coherence": [0.1, 0.2, 0.3, 0.4], "coherence_lo": [0.0, 0.1, 0.2, 0.3],
        "coherence_hi": [0.2, 0.3, 0.4, 0.5], "delta_coherence": [math.nan] * 4,
        "dataset": ["tiny"] * 4, "max_new_tokens": [40] * 4,
        "config": ["a", "b", "c", "human:r"], "references": ["r"] * 4})


def test_string_settings_are_rendered_as_text():
    from analysis.latex import full_table
    from analysis.plan import render_plan
    from analysis.render import rendered
    from analysis.report import render

    summary = string_settings_summary()
    params = ["top_k", "top_p", "model", "model.dtype"]
    assert label(summary.iloc[1], params, latex=False) == (
        "top-k (k=10, model=SmolLM2-135M, model.dtype=bfloat16)")
    assert label(summary.iloc[2], params) == (
        "top-$p$ ($p{=}0.95$, model=tiny, model.dtype=bfloat16)")
    paper = paper_table(summary, ["coherence"])
    assert "top-$k$ ($k{=}10$, model=tiny, model.dtype=float32)" in paper
    assert "\\emph{SmolLM2-135M, tiny, 40 tokens}" in paper  # a reference group per model
    assert "model.dtype=bfloat16" in full_table(summary, rendered(summary))
    html = render(summary, [], [], [], "sweep")
    assert 'data-label="top-k (k=10, model=tiny, model.dtype=float32)' in html
    plan = pd.DataFrame({"method": ["top_p"], "top_p": [0.95], "model.dtype": ["bfloat16"],
                         "metric": ["coherence"], "delta": [0.1], "n_needed": [math.nan],
                         "status": ["no variance of Δ in the pilot: no plan"],
                         "command": [""]})
    assert "| top_p top_p=0.95 model.dtype=bfloat16 |" in render_plan(
        plan, ["method", "top_p", "model.dtype"], [])


def wide_summary() -> pd.DataFrame:
    """The seed-comparison sweep's shape: 11 configurations (every method and parameter column)
    and the human row, every metric of summary.md with its interval and Δ, at its widest
    (three-digit values, negative Δs)."""
    methods = [("greedy", {}), *[("locally_typical", {"alpha": a, "top_k": 10.0})
                                 for a in (0.0, 0.5)],
               *[("locally_typical_distance", {"alpha": a, "top_k": 10.0})
                 for a in (0.2, 0.5, 0.7, 1.0)], ("min_p", {"min_p": 0.1}),
               ("top_k", {"top_k": 10.0}), ("top_p", {"top_p": 0.95}),
               ("typical", {"typical_p": 0.95}), ("human", {})]
    rows = []
    for i, (method, params) in enumerate(methods):
        row = {"method": method, **dict.fromkeys(["temperature", "alpha", "top_k", "min_p",
                                                  "top_p", "typical_p"]), **params,
               "n": 4800, "seeds": 2, "mauve": 0.9123, "mauve_std": 0.1234}
        for metric, value in (("diversity", 0.9999), ("rep_2", 99.99), ("coherence", 0.9999),
                              ("perplexity", 999.99), ("topk_identical_rate", 0.9999)):
            row |= {metric: value, f"{metric}_lo": value * 0.99, f"{metric}_hi": value}
            if method != "human" and i != 8:  # the baseline (top-k) has no Δ
                row |= {f"delta_{metric}": -value / 2, f"delta_{metric}_lo": -value,
                        f"delta_{metric}_hi": -value / 4, f"p_{metric}_holm": 0.01}
        rows.append(row | {"delta_subset": 1.0 if method == "greedy" else 0.0})
    return pd.DataFrame(rows).assign(delta_mauve=-0.5, p_mauve_holm=0.01)


@pytest.mark.tex
@needs_tex
def test_summary_full_fits_a_landscape_page_and_samples_set_the_label_apart(tmp_path):
    from analysis.latex import full_table, samples_tex
    from analysis.render import rendered
    from analysis.samples import SampleGroup, SamplePrompt

    summary = wide_summary()
    log = compile_latex(tmp_path, "full", full_table(summary, rendered(summary)),
                        "\\usepackage[landscape]{geometry}")
    overfull = [float(w) for w in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide", log)]
    assert overfull == [], f"summary_full.tex is {max(overfull)}pt too wide on a landscape page"
    assert "\\resizebox" in full_table(summary, rendered(summary)).splitlines()[1]
    # a text that departs from the baseline at its first word: bold, under its bold-free label
    prompt = SamplePrompt(0, 0, "The house", "stood empty.", {}, [
        SampleGroup([{"method": "top_k", "top_k": 10}], "was old.", True),
        SampleGroup([{"method": "top_p", "top_p": 0.95}], "Gardens grew.", False, (0, 7))])
    compile_latex(tmp_path, "samples", samples_tex([prompt]))
    text = subprocess.run(["pdftotext", "-layout", "samples.pdf", "-"], cwd=tmp_path,
                          capture_output=True, text=True, check=True).stdout
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    label_line = next(i for i, line in enumerate(lines) if "p=0.95" in line)
    assert lines[label_line].endswith("(p=0.95)") and lines[label_line + 1] == "Gardens grew."


def test_samples_of_rows_told_apart_by_a_setting_name_it_and_mark_against_the_baseline():
    """Two dtypes of two selectors: each card names its dtype, and the baseline (top-k at
    float32, as the summary's baseline row has it) is found, so departures are marked."""
    from omegaconf import OmegaConf

    from analysis.latex import baseline_selector
    from analysis.load import Job
    from analysis.samples import sample_prompts
    from analysis.table import configuration, summarize
    from tests.conftest import compose

    texts = {("top_k", "float32"): "the cat sat", ("top_k", "bfloat16"): "the cat ran",
             ("top_p", "float32"): "the dog sat", ("top_p", "bfloat16"): "the cat sat"}
    jobs = []
    for (selector, dtype), text in texts.items():
        config = OmegaConf.to_container(compose(*TINY, f"selector={selector}",
                                                f"model.dtype={dtype}"), resolve=True)
        records = [{"prompt_id": 0, "seed": 0, "prompt": "p", "reference": "r",
                    "continuation": text}]
        jobs.append(Job(config, records=records))
    per_seed = pd.DataFrame([{**configuration(job), "seed": 0, "n": 1, "coherence": 0.5}
                             for job in jobs])
    summary = summarize(per_seed, pd.DataFrame(), jobs)
    base = summary[(summary["method"] == "top_k") & (summary["model.dtype"] == "float32")].index
    summary["delta_coherence"] = [math.nan if i in base else 0.0 for i in summary.index]
    baseline = baseline_selector(summary)
    assert baseline["model.dtype"] == "float32"
    (sample,) = sample_prompts(jobs, 1, baseline)
    cards = {tuple(label(c, list(c)[1:], latex=False) for c in g.configurations):
             (g.text, g.is_baseline, g.departs) for g in sample.groups}
    assert cards == {
        ("top-k (k=10, model.dtype=float32)", "top-p (p=0.95, model.dtype=bfloat16)"):
            ("the cat sat", True, None),
        ("top-k (k=10, model.dtype=bfloat16)",): ("the cat ran", False, (8, 11)),
        ("top-p (p=0.95, model.dtype=float32)",): ("the dog sat", False, (4, 7))}
