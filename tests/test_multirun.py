"""A multirun finishes what it can (issue 19): a failing job does not stop the others under
either launcher, each failure has its own line and the multirun ends with one summary;
the fused pass runs under the jobs' hydra.job.env_set; jobs sharing a dir are refused."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness.__main__ as harness_entry
from harness.records import RECORDS
from harness.runner import job_lock, pregenerate
from tests.conftest import ROOT, TINY, compose

SMALL = [*TINY, "dataset.limit=2", "generation.seeds=[0]"]


def multirun(monkeypatch, *args: str) -> int:
    root = logging.getLogger()  # an earlier test's console handler writes to a closed capture
    root.handlers = [h for h in root.handlers if type(h) is not logging.StreamHandler]
    monkeypatch.setattr(sys, "argv", ["harness", "-m", *SMALL, *args])
    try:
        harness_entry.cli()
    except SystemExit as stop:
        return stop.code
    return 0


def job_dir(sweep: Path, top_k: int) -> Path:
    (found,) = sweep.glob(f"top_k,*selector.top_k={top_k}")
    return found


@pytest.mark.parametrize("launcher", ["basic", "fused"])
def test_a_failing_job_does_not_stop_the_others(launcher, tmp_path, monkeypatch, capfd):
    sweep = tmp_path / "sweep"
    code = multirun(monkeypatch, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}",
                    "selector=top_k", "selector.top_k=0,5,7")
    out = capfd.readouterr()
    text = out.out + out.err
    assert code == 1
    assert "Traceback" not in text
    (summary,) = [line for line in text.splitlines() if "jobs failed" in line]
    assert summary.startswith("1 of 3 jobs failed: job top_k,")
    assert "top_k=0 is out of range" in summary and "re-run the same command" in summary.lower()
    own = [line for line in text.splitlines() if "out of range" in line and "failed" not in line]
    assert len(own) == 1  # its own line, before any job ran
    for good in (5, 7):  # ran, and got what every job gets
        done = job_dir(sweep, good)
        assert len((done / RECORDS).read_text().splitlines()) == 2
        for name in ("job.yaml", "timing.json", ".hydra/overrides.yaml"):
            assert (done / name).exists(), name
    assert not list(sweep.glob("top_k,*selector.top_k=0"))  # refused before Hydra made its dir


@pytest.mark.parametrize("launcher", ["basic", "fused"])
def test_a_held_lock_fails_its_job_only(launcher, tmp_path, monkeypatch, capfd):
    sweep = tmp_path / "sweep"
    args = (f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}", "selector=top_k",
            "selector.top_k=3,5")
    assert multirun(monkeypatch, *args) == 0
    capfd.readouterr()
    held = job_dir(sweep, 3)
    (held / RECORDS).unlink()
    (job_dir(sweep, 5) / RECORDS).unlink()
    with job_lock(held):  # another writer holds this one dir
        code = multirun(monkeypatch, *args)
    text = capfd.readouterr().err
    assert code == 1
    assert "1 of 2 jobs failed" in text and "is being written by host" in text
    assert not (held / RECORDS).exists()
    assert len((job_dir(sweep, 5) / RECORDS).read_text().splitlines()) == 2


def test_jobs_that_would_share_a_dir_are_refused_before_any_runs(tmp_path, monkeypatch, capfd):
    for overrides in (["dataset.limit=3,6"], ["generation.seeds=[0],[1]"],
                      ["generation.batch_size=2,4"]):
        sweep = tmp_path / overrides[0].split("=")[0]
        assert multirun(monkeypatch, "hydra/launcher=fused", f"hydra.sweep.dir={sweep}",
                        *overrides) == 1
        text = capfd.readouterr().err
        assert "2 jobs of this multirun would write one job dir" in text
        assert overrides[0].split("=")[0] in text and "Run one job with the union" in text
        assert not list(sweep.rglob(RECORDS))


def test_fused_generation_runs_under_the_jobs_env_set(tmp_path):
    """HARNESS_CACHE set per job: the fused pass builds the dataset into that cache (run_job
    only tracks pregenerated jobs, so nothing else could have built it there)."""
    cache = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "harness", "-m", *SMALL, "hydra/launcher=fused",
         "hydra.sweep.dir=sweep", "selector=top_k,top_p",
         f"+hydra.job.env_set.HARNESS_CACHE={cache}"],
        cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (cache / "data" / "tiny.jsonl").exists()
    timings = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/timing.json")]
    assert [t["fused_jobs"] for t in timings] == [2, 2]


def test_a_group_whose_env_values_differ_is_not_fused(tmp_path, monkeypatch, caplog):
    seen = []

    def generate(specs):
        seen.append((len(specs), os.environ.get("HARNESS_TEST_ENV")))
        return []

    monkeypatch.setattr("harness.runner.generate_jobs", generate)
    monkeypatch.delenv("HARNESS_TEST_ENV", raising=False)
    a, b = compose(*SMALL, "selector=top_k"), compose(*SMALL, "selector=top_p")
    pregenerate([(tmp_path / "a", a, {"HARNESS_TEST_ENV": "1"}),
                 (tmp_path / "b", b, {"HARNESS_TEST_ENV": "2"})])
    assert seen == [] and "set different hydra.job.env_set values" in caplog.text
    pregenerate([(tmp_path / "a", a, {"HARNESS_TEST_ENV": "1"}),
                 (tmp_path / "b", b, {"HARNESS_TEST_ENV": "1"})])
    assert seen == [(2, "1")]
    assert "HARNESS_TEST_ENV" not in os.environ  # restored


def test_the_runs_summed_rate_is_the_whole_generations_as_in_timing_json():
    from harness.tracking import summed

    # two invocations of one job fused with others: 40 of 100 tokens in 10 s, 20 of 50 in 5 s
    timings = [{"generate_seconds": 10.0, "new_tokens": 40, "fused_new_tokens": 100,
                "records": 4}, {"generate_seconds": 5.0, "new_tokens": 20,
                                "fused_new_tokens": 50, "records": 2}]
    assert summed(timings) == {"invocations": 2, "generate_seconds": 15.0, "new_tokens": 60,
                               "records": 6, "tokens_per_s": 150 / 15}
