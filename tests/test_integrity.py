"""Fault injection on the tiny model: kills, concurrent launches, corrupt files, full disks,
tracking outages, SIGTERM, and duplicated or partial sweeps in the analysis."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.load import DuplicateMismatch, find_jobs
from harness.records import QUARANTINE, RECORDS
from harness.runner import JobError, job_lock, run_job
from tests.conftest import ROOT, TINY

KEY = lambda r: (r["prompt_id"], r["seed"])  # noqa: E731


def records(path: Path) -> list[dict]:
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=KEY)


def start(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", *TINY, *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


# 160 records, one per batch: room for 20 kills a few records apart on a fast machine too
JOB = ("dataset.limit=40", "generation.seeds=[0,1,2,3]", "generation.batch_size=1",
       "generation.max_new_tokens=24")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    from tests.conftest import compose

    out = tmp_path_factory.mktemp("reference")
    return records(run_job(compose(*TINY, *JOB), out / "job"))


@pytest.mark.slow  # make test-slow (CI): about a minute or more
def test_twenty_kill_9s_at_random_points_lose_and_duplicate_nothing(tmp_path, reference):
    rng = random.Random(0)
    out, kills = tmp_path / "job" / RECORDS, 0
    while kills < 20:
        job = start(*JOB, "hydra.run.dir=job", cwd=tmp_path)
        before = lines(out)
        deadline = time.monotonic() + 60
        while job.poll() is None and lines(out) == before and time.monotonic() < deadline:
            time.sleep(0.01)  # kill while generating, not while importing
        time.sleep(rng.uniform(0, 0.05))  # a record or two: mid-batch or mid-write
        if job.poll() is not None:
            break
        job.send_signal(signal.SIGKILL)
        job.wait()
        kills += 1
    assert kills == 20, "the job finished before it was killed 20 times"
    finished = start(*JOB, "hydra.run.dir=job", cwd=tmp_path)
    output = finished.communicate()[0]  # read as it runs: a full pipe would block the job
    assert finished.returncode == 0, output
    assert records(out) == reference


def test_a_second_writer_stops_at_once_naming_the_holder(tmp_path, tiny_cfg):
    job_dir = tmp_path / "job"
    with job_lock(job_dir):
        with pytest.raises(JobError, match=rf"being written by host \S+ pid {os.getpid()}"):
            run_job(tiny_cfg("dataset.limit=2"), job_dir)
        other = start("dataset.limit=2", "hydra.run.dir=job", cwd=tmp_path)
        output = other.communicate()[0]
        assert other.returncode == 1
        assert f"pid {os.getpid()}" in output
    assert not (job_dir / RECORDS).exists() or lines(job_dir / RECORDS) == 0


def test_two_concurrent_launches_make_exactly_one_writer(tmp_path, reference):
    jobs = [start(*JOB, "hydra.run.dir=job", cwd=tmp_path) for _ in range(2)]
    outputs = [job.communicate()[0] for job in jobs]  # read as they run: a full pipe blocks
    codes = sorted(job.returncode for job in jobs)
    assert codes == [0, 1], outputs
    assert sum("is being written by host" in text for text in outputs) == 1
    assert records(tmp_path / "job" / RECORDS) == reference


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_corrupt_lines_are_quarantined_and_regenerated(tmp_path, tiny_cfg, where):
    cfg = tiny_cfg("dataset.limit=6", "generation.seeds=[0,1]")
    complete = records(run_job(cfg, tmp_path / "complete"))
    path = run_job(cfg, tmp_path / "job")
    text = path.read_text().splitlines(keepends=True)
    index = {"start": 0, "middle": 5, "end": len(text) - 1}[where]
    text[index] = '{"prompt_id": 3, "seed": 0, "contin\n'
    text.insert(2, "not json at all\n")
    path.write_text("".join(text))
    assert records(run_job(cfg, tmp_path / "job")) == complete
    quarantined = [json.loads(line) for line in (path.parent / QUARANTINE).read_text().splitlines()]
    assert sorted(q["line"] for q in quarantined) == sorted({3, index + 1 + (index >= 2)})
    assert {q["text"] for q in quarantined} >= {"not json at all"}


def test_a_full_disk_stops_the_job_clearly_and_keeps_earlier_records(tmp_path, tiny_cfg,
                                                                      monkeypatch):
    cfg = tiny_cfg("dataset.limit=8", "generation.seeds=[0]", "generation.batch_size=2")
    complete = records(run_job(cfg, tmp_path / "complete"))

    class FullDisk:
        def __init__(self, path):
            self.file, self.writes = path.open("a"), 0

        def write(self, text):
            self.writes += 1
            if self.writes > 2:
                self.file.write(text[: len(text) // 2])  # half a batch, then no space
                self.file.flush()
                raise OSError(28, "No space left on device")
            return self.file.write(text)

        def flush(self):
            self.file.flush()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr("harness.runner.open_append", FullDisk)
    with pytest.raises(JobError, match=r"No space left on device.*records written before are"):
        run_job(cfg, tmp_path / "job")
    kept = (tmp_path / "job" / RECORDS).read_text().splitlines(keepends=True)
    whole = sorted((json.loads(line) for line in kept if line.endswith("\n")), key=KEY)
    assert len(whole) >= 4 and whole == complete[: len(whole)]  # two batches, and whole lines
    monkeypatch.undo()
    assert records(run_job(cfg, tmp_path / "job")) == complete


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("outage", ["no key", "unreachable host"])
def test_a_tracking_outage_never_costs_a_generation(tmp_path, outage):
    env = {"HOME": str(tmp_path), "WANDB_MODE": "", "WANDB_API_KEY": ""}
    if outage == "unreachable host":
        env.update(WANDB_API_KEY="0" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    args = [a for a in TINY if not a.startswith("wandb")]
    job = subprocess.run([sys.executable, "-m", "harness", *args, "dataset.limit=3",
                          "generation.seeds=[0]", "wandb=online", "wandb.init_timeout=5",
                          "hydra.run.dir=job"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=300)
    assert job.returncode == 0, job.stderr
    assert lines(tmp_path / "job" / RECORDS) == 3
    assert "wandb sync" in job.stdout + job.stderr
    assert list((tmp_path / "job" / "wandb").glob("offline-run-*"))


def test_sigterm_writes_finished_batches_releases_the_lock_and_exits_143(tmp_path, reference):
    job = start(*JOB, "hydra.run.dir=job", cwd=tmp_path)
    out = tmp_path / "job" / RECORDS
    while job.poll() is None and lines(out) < 10:
        time.sleep(0.01)
    job.send_signal(signal.SIGTERM)
    output = job.communicate(timeout=60)[0]
    assert job.returncode == 128 + signal.SIGTERM, output
    assert out.read_text().endswith("\n") and lines(out) < len(reference)
    with job_lock(tmp_path / "job"):  # released
        pass
    resumed = start(*JOB, "hydra.run.dir=job", cwd=tmp_path)
    assert resumed.communicate()[0] is not None and resumed.returncode == 0
    assert records(out) == reference


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    from harness.sweep import main as run_sweep

    out = tmp_path_factory.mktemp("sweep")
    run_sweep(["seed_comparison", *TINY, "dataset.limit=6", "generation.seeds=[0]",
               f"hydra.sweep.dir={out}", "hydra/launcher=fused"])
    return out


def test_the_analysis_counts_each_record_once_across_copies(sweep, tmp_path, caplog):
    copy = shutil.copytree(sweep, tmp_path / "copy")
    jobs = find_jobs([sweep, copy])
    assert len(jobs) == 11 and all(len(j.records) == 6 for j in jobs if "greedy" not in j.name)
    assert "66 duplicated (configuration, prompt, seed) records dropped" in caplog.text
    job_dir = next(copy.glob("top_k*"))
    path = job_dir / RECORDS
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["continuation"] += " changed"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DuplicateMismatch, match=f"{next(sweep.glob('top_k*'))} and {job_dir}"):
        find_jobs([sweep, copy])


def test_the_analysis_compares_rows_on_the_common_prompts(sweep, tmp_path, caplog):
    partial = shutil.copytree(sweep, tmp_path / "partial")
    path = next(partial.glob("top_p*")) / RECORDS
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["prompt_id"] != rows[0][
        "prompt_id"]) + "{torn")
    (next(partial.glob("min_p*")) / RECORDS).write_text("only corrupt lines\n")
    jobs = find_jobs([partial])
    assert len(jobs) == 10 and {len(j.records) for j in jobs} == {5}
    assert "1 records set aside" in caplog.text
