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


def compile_latex(directory: Path, name: str, body: str) -> str:
    """pdflatex on a plain article with booktabs that holds ``body``; the log (fails on any
    LaTeX error)."""
    document = directory / f"{name}.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n"
                        f"\\begin{{document}}\n{body}\n\\end{{document}}\n")
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
        log = compile_latex(tmp_path, name, f"\\input{{{out / name}.tex}}")
        if name == "summary":
            overfull = [float(w) for w in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide",
                                                     log)]
            assert all(w <= 1.0 for w in overfull), f"summary.tex is {max(overfull)}pt too wide"
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


def test_report_is_one_file_with_the_plan_and_no_outside_reference(tmp_path):
    import matplotlib.pyplot as plt

    from analysis.report import render

    figure = tmp_path / "plot.png"
    plt.plot([0, 1]), plt.savefig(figure), plt.close()
    summary = summary_of({"coherence": [0.1, 0.2, 0.3]}, [math.nan, 0.01, 0.5]).assign(
        delta_coherence_lo=[math.nan, 0.0, 0.0], delta_coherence_hi=[math.nan, 0.2, 0.4],
        se_coherence=[math.nan, 0.05, 0.1])
    plan = pd.DataFrame({"method": ["a"], "metric": ["coherence"], "delta": [0.05],
                         "n_needed": [412], "command": ["python -m harness.sweep x <y>"]})
    html = render(summary, [], [figure], ["a note"], "sweep", plan)
    assert re.findall(r"""(?:src|href)=["'](?!data:|#)""", html) == []
    assert html.count('src="data:image/png;base64,') == 1
    assert "<td>412</td>" in html and "x &lt;y&gt;" in html  # the plan, escaped
    # where the notes lack it: 2.8 x the median bootstrap SE of Δ, 2.8 x 0.075 (the one
    # computation summary.md and summary.tex show: analysis.uncertainty.minimum_detectable)
    assert "a note" in html and "Coherence 0.21" in html
