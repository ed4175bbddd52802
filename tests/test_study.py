"""``python -m harness.study`` on the tiny model: the pilot's records kept byte for byte,
decided configurations stop growing, one launch per look, a study killed mid-look resumes at
its last complete look without re-deciding; and bad input is one line before any work."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

import harness.sweep
from analysis.sequential import (
    DIFFERENT,
    IDENTICAL,
    UNDECIDED,
    WITHIN,
    boundaries,
    on_t_scale,
)
from harness.records import RECORDS
from harness.study import StudyConfig, main, planned_looks
from tests.conftest import ROOT, TINY

GRIDS = {"grids": [{"selector": "top_k", "selector.top_k": 10},
                   {"selector": "locally_typical_distance", "selector.alpha": 0.2,
                    "selector.top_k": 10},  # keeps exactly the top 10: top_k's texts
                   {"selector": "top_p", "selector.top_p": 0.9},
                   {"selector": "greedy"}]}
STUDY = ["mini.yaml", *TINY, "generation.seeds=[0]", "study.delta.coherence=0.01",
         "study.pilot=4", "study.max_prompts=12", "study.looks=3"]
LOOKS = [4, 7, 12]


def records(sweep) -> dict[str, bytes]:
    return {p.parent.name.split(",")[0]: p.read_bytes() for p in sweep.glob(f"*/{RECORDS}")}


def prompts(data: bytes) -> int:
    return len({json.loads(line)["prompt_id"] for line in data.splitlines()})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study killed (Ctrl-C) right after its second launch, then re-run to its end; the
    records after every launch."""
    launch = tmp_path_factory.mktemp("study")
    (launch / "mini.yaml").write_text(yaml.safe_dump(GRIDS))
    sweep = launch / "multirun" / "mini"
    original = harness.sweep.main
    after: list[dict[str, bytes]] = []
    killed = {"at": 2}

    def launch_and_snapshot(argv):
        original(argv)
        after.append(records(sweep))
        if len(after) == killed["at"]:
            killed["at"] = None
            raise KeyboardInterrupt

    cwd = os.getcwd()
    os.chdir(launch)
    harness.sweep.main = launch_and_snapshot
    try:
        with pytest.raises(SystemExit) as stop:
            main(STUDY)
        assert stop.value.code == 130
        state_after_kill = json.loads((sweep / "study.json").read_text())
        main(STUDY)
    finally:
        harness.sweep.main = original
        os.chdir(cwd)
    return sweep, after, state_after_kill


def test_pilot_records_are_kept_byte_for_byte_and_each_look_only_appends(study):
    sweep, after, _ = study
    assert sorted(after[0]) == ["greedy", "locally_typical_distance", "top_k", "top_p"]
    for earlier, later in itertools.pairwise(after):
        for job, data in earlier.items():
            assert later[job].startswith(data), job
    assert records(sweep) == after[-1]


def test_decided_configurations_stop_growing_and_the_rest_reach_the_last_look(study):
    sweep, after, _ = study
    state = json.loads((sweep / "study.json").read_text())
    assert [look["n"] for look in state["looks"]] == LOOKS[:len(state["looks"])]
    table = pd.read_csv(sweep / "study.csv")
    assert set(table["metric"]) == {"coherence"}
    assert {"method", "top_k", "top_p", "alpha", "metric", "delta", "decision", "n", "look",
            "alpha_spent", "delta_hat", "low", "high", "tokens"} <= set(table)
    by_method = table.set_index("method")
    # top_k's texts: identical, decided at the pilot, never generated again
    assert by_method.loc["locally_typical_distance", "decision"] == IDENTICAL
    assert by_method.loc["locally_typical_distance", "look"] == 1
    final = records(sweep)
    for method, row in by_method.iterrows():
        assert row["decision"] in (IDENTICAL, WITHIN, DIFFERENT, UNDECIDED)
        assert prompts(final[method]) == row["n"] == LOOKS[row["look"] - 1], method
        if row["decision"] == UNDECIDED:
            assert row["look"] == len(state["looks"])
    undecided = by_method[by_method["decision"] == UNDECIDED]
    assert prompts(final["top_k"]) == (LOOKS[-1] if len(undecided) else max(by_method["n"]))
    # one launch per look (the killed look's launch ran twice: the second added nothing)
    assert len(after) == len(state["looks"]) + 1 and after[2] == after[1]


def test_the_boundaries_are_the_designs_and_the_intervals_use_them(study):
    sweep, _, _ = study
    state = json.loads((sweep / "study.json").read_text())
    design = state["design"]
    assert design["comparisons"] == 3 and design["alpha_per_comparison"] == pytest.approx(0.05 / 3)
    planned = boundaries([n / 12 for n in LOOKS], 0.05 / 3)
    assert design["boundaries_planned"] == pytest.approx(planned.tolist())
    for look in state["looks"]:
        assert look["boundary"] == pytest.approx(planned[look["look"] - 1])
    for c in state["comparisons"]:
        if c["decision"] not in (IDENTICAL,) and c["se"] > 0:
            c_k = on_t_scale(planned[c["look"] - 1], c["n"])  # an SE from n prompts
            assert c["low"] == pytest.approx(c["delta_hat"] - c_k * c["se"])
    markdown = (sweep / "study.md").read_text()
    assert "fixed-n plan" in markdown.splitlines()[-1]


def test_a_killed_study_resumes_at_its_last_complete_look_without_re_deciding(study):
    sweep, _, killed = study
    state = json.loads((sweep / "study.json").read_text())
    assert len(killed["looks"]) == 1  # killed during look 2: look 1 complete
    assert state["looks"][0] == killed["looks"][0]
    assert state["pilot"] == killed["pilot"]
    decided_then = [c for c in killed["comparisons"] if c["decision"] != UNDECIDED]
    now = {(c["config"], c["metric"]): c for c in state["comparisons"]}
    for c in decided_then:
        assert now[(c["config"], c["metric"])] == c


@pytest.mark.parametrize(("override", "named"), [
    ("study.delta.mauve=2", "study.delta.mauve: MAUVE's swap test has no closed-form boundary"),
    ("study.delta.diversity=-1", "study.delta.diversity=-1"),
    ("study.delta.bogus=1", "study.delta.bogus"),
    ("study.looks=[4,3]", "study.looks"),
    ("study.pilot=2", "study.pilot=2"),
    ("study.spending=haybittle", "haybittle"),
    ("study.alpha=1.5", "study.alpha"),
    ("dataset.limit=9", "dataset.limit=9"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, monkeypatch, caplog, override, named):
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(GRIDS))
    monkeypatch.chdir(tmp_path)
    argv = [a for a in STUDY if not a.startswith("study.delta")]
    argv += [override] if override.startswith("study.delta") else [
        "study.delta.coherence=0.01", override]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and named in errors[0], errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini.yaml"]  # nothing written


def test_no_delta_and_another_studys_dir_are_refused(tmp_path, monkeypatch, caplog):
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(GRIDS))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main([a for a in STUDY if not a.startswith("study.delta")])
    assert "no study.delta given" in caplog.records[-1].getMessage()
    sweep = tmp_path / "multirun" / "mini"
    sweep.mkdir(parents=True)
    (sweep / "study.json").write_text(json.dumps({"command": {
        "sweep": "mini.yaml", "sweep_overrides": ["model=tiny"], "study": {},
        "analysis_overrides": []}}))
    before = (sweep / "study.json").read_bytes()
    with pytest.raises(SystemExit):
        main(STUDY)
    assert "belongs to another study" in caplog.records[-1].getMessage()
    assert (sweep / "study.json").read_bytes() == before


def test_looks_given_as_counts_or_a_number():
    assert planned_looks(StudyConfig(pilot=20, max_prompts=320, looks=5)) == [20, 40, 80, 160,
                                                                              320]
    assert planned_looks(StudyConfig(pilot=20, max_prompts=200, looks=[20, 60, 200])) == [
        20, 60, 200]
    with pytest.raises(ValueError, match=r"study\.looks"):
        planned_looks(StudyConfig(pilot=20, max_prompts=200, looks=[30, 200]))


@pytest.mark.slow
def test_a_real_kill_and_the_same_command_finish_the_study(tmp_path):
    """SIGKILL while look 2 generates, then the same command: look 1 is read back, every record
    written before the kill stays, and the study ends as an uninterrupted one would."""
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(GRIDS))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "harness.study",
               *[a for a in STUDY if not a.startswith(("study.max_prompts", "study.looks"))],
               "study.max_prompts=40", "study.looks=[4,40]"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    sweep = tmp_path / "multirun" / "mini"
    state = sweep / "study.json"
    deadline = time.time() + 600
    while time.time() < deadline and not (
            state.exists() and any(prompts(d) > 4 for d in records(sweep).values())):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed, before = json.loads(state.read_text()), records(sweep)
    assert len(killed["looks"]) == 1
    subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True)
    final = json.loads(state.read_text())
    assert final["looks"][0] == killed["looks"][0]
    for job, data in before.items():
        cut = data[:data.rfind(b"\n") + 1]  # a torn last line is cut off by the runner
        assert records(sweep)[job].startswith(cut), job


def test_the_study_is_logged_to_its_own_wandb_run(study):
    """Re-running a finished study launches nothing; W&B (a setting a resume may change) gets
    the study's run: the decisions table and their counts, in the sweep's group."""
    from tests.wandb_files import read_runs

    sweep, _, _ = study
    before = records(sweep)
    cwd = os.getcwd()
    os.chdir(sweep.parent.parent)
    try:
        main([a.replace("wandb=disabled", "wandb=offline") for a in STUDY])
    finally:
        os.chdir(cwd)
    assert records(sweep) == before
    (run,) = read_runs(sweep / "wandb")
    assert (run.job_type, run.group, run.name) == ("study", "mini", "study-mini")
    assert (sweep / "wandb_study_run_id").read_text() == run.id
    decisions = pd.read_csv(sweep / "study.csv")["decision"].value_counts()
    for decision in (IDENTICAL, WITHIN, DIFFERENT, UNDECIDED):
        assert run.summary[f"decisions/{decision}"] == decisions.get(decision, 0)
    assert run.summary["study/_type"] == "table-file" and run.summary["study/nrows"] == 3


def test_the_fixed_design_plans_as_the_plan_does():
    """study.md's fixed-n comparison is analysis.plan's n at the study's α/m and power (by
    hand: SE 1 on 24 prompts, δ 1, α/m 0.05, 80% power: n = 194, test_plan's value)."""
    from statistics import NormalDist
    from types import SimpleNamespace

    from analysis.plan import prompts_needed
    from harness.study import fixed_design

    pilot = [{"se": 1.0, "delta": 1.0, "decision": UNDECIDED},
             {"se": 0.0, "delta": 1.0, "decision": IDENTICAL}]
    state = {"looks": [{"n": 24, "seconds": 10.0, "cpu_seconds": 5.0}],
             "design": {"alpha_per_comparison": 0.05}, "pilot": pilot}
    study = SimpleNamespace(state=state, cfg=SimpleNamespace(power=0.8))
    job = SimpleNamespace(records=[{"seed": 0, "num_tokens": 16, "prompt_id": i}
                                   for i in range(24)])
    fixed = fixed_design(study, {"top_k": job})
    normal = NormalDist()
    assert fixed["n"] == prompts_needed(1.0, 24, 1.0, normal.inv_cdf(0.975),
                                        normal.inv_cdf(0.8)) == 194
    assert fixed["tokens"] == 194 * 16
