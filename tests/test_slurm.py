"""The cluster launchers (``hydra/launcher=fused_slurm``, ``fused_submitit_local``): shard
layout and merge on disk, a local run, and the SLURM integration tests against the single-node
cluster of tests/slurm/cluster.sh (``-m slurm``; ``make test-slow`` and CI run them)."""

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from harness.records import RECORDS
from harness.runner import JobError, job_lock, run_job
from harness.shards import (
    NotMergeable,
    check_job_dir,
    generate_shard,
    is_complete,
    merge,
    shard_config,
    shard_dir,
)
from tests.conftest import ROOT, TINY, compose

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, env=ENV)


# --- cold caches: asset builds racing each other (harness.assets.build_once) --------------------

def build_in_processes(build, count: int = 2, umask: int = 0o027) -> list[str]:
    """Run ``build()`` in ``count`` forked processes that start together (a barrier) under
    ``umask``; returns what each returned, or its error."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(count), context.Queue()

    def child() -> None:
        os.umask(umask)
        barrier.wait()
        try:
            results.put(str(build()))
        except Exception as error:  # reported to the test, which names it
            results.put(f"error: {error!r}")

    processes = [context.Process(target=child) for _ in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(300)
    return sorted(results.get(timeout=5) for _ in processes)


def slow_folder(builds):
    def write(out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")
        time.sleep(0.5)  # both builders are inside the build at once
        (out / "weights").write_bytes(os.urandom(1000))
        builds.put(out.parent.name)
    return write


@pytest.mark.parametrize("lock", ["lock", "no flock on this file system"])
def test_two_cold_builds_at_once_both_succeed_and_leave_one_copy(tmp_path, monkeypatch, lock):
    """Two builders of one folder at once: both return it, one copy stays, no temporary
    left, its files have the umask's modes. With the lock the second waits and builds nothing;
    without it (a file system with no flock) both build and the second rename loses."""
    from contextlib import nullcontext

    from harness import assets

    if lock != "lock":
        monkeypatch.setattr(assets, "parent_lock", lambda folder: nullcontext())
    builds = multiprocessing.get_context("fork").Queue()
    target = tmp_path / "models" / "model"
    results = build_in_processes(lambda: assets.build_once(target, slow_folder(builds)))
    assert results == [str(target)] * 2
    assert os.listdir(target.parent) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights"]
    made = []
    while not builds.empty():
        made.append(builds.get())
    assert len(made) == (1 if lock == "lock" else 2)
    assert {oct(p.stat().st_mode & 0o777) for p in target.iterdir()} == {oct(0o640)}
    assert oct(target.stat().st_mode & 0o777) == oct(0o750)


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    from harness.assets import build_once

    def broken(out: Path) -> None:
        out.mkdir()
        (out / "half").write_text("x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        build_once(tmp_path / "cache" / "model", broken)
    assert os.listdir(tmp_path / "cache") == []


@pytest.mark.parametrize("corpus", ["tiny", "synthetic"])
def test_every_bundled_corpus_builds_once_under_a_cold_race(tmp_path, monkeypatch, corpus):
    from harness.data import BUNDLED

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    results = build_in_processes(BUNDLED[f"bundled:{corpus}"], count=3)
    target = tmp_path / "data" / f"{corpus}.jsonl"
    assert results == [str(target)] * 3 and os.listdir(tmp_path / "data") == [target.name]
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)
    # the same corpus as a build alone (generated from a fixed seed)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "alone"))
    assert BUNDLED[f"bundled:{corpus}"]().read_bytes() == target.read_bytes()


@pytest.mark.slow
def test_two_cold_smollm2_builds_at_once_make_one_readable_copy(tmp_path):
    """The real build: two processes convert the bundled GGUF into one empty cache at once
    (as array tasks on a shared home do): both succeed, one folder holds the weights, equal to
    a build alone (the one in the user cache), with the umask's modes (safetensors writes its
    file 0600), and nothing else is left."""
    from harness import cache_dir

    reference = cache_dir() / "models" / "smollm2-135m-instruct"
    if not (reference / "model.safetensors").exists():
        pytest.skip(f"no built SmolLM2 to compare with under {reference} (make setup)")
    cache = tmp_path / "cache"
    code = ("import os; os.umask(0o022); from harness.models import build_smollm2; "
            "print(build_smollm2())")
    env = {**ENV, "HARNESS_CACHE": str(cache)}
    processes = [subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=900) for process in processes]
    target = cache / "models" / "smollm2-135m-instruct"
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert out.strip() == str(target)
    assert os.listdir(cache / "models") == [target.name]
    assert sorted(os.listdir(target)) == sorted(os.listdir(reference))
    for path in target.iterdir():
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path
    assert (target / "model.safetensors").read_bytes() == (
        reference / "model.safetensors").read_bytes()


@given(st.integers(0, 4), st.integers(1, 5), st.integers(1, 5), st.data())
def test_a_shard_of_a_shard_is_one_shard_of_the_prompts(s, m, n, data):
    s = s % m
    i = data.draw(st.integers(0, n - 1))
    prompts = list(range(50))
    cfg = shard_config(OmegaConf.create({"dataset": {"shard": s, "num_shards": m}}), i, n)
    assert prompts[cfg.dataset.shard :: cfg.dataset.num_shards] == prompts[s::m][i::n]


def test_shards_merge_into_the_in_process_job_dir(tmp_path):
    """Shard dirs written in any order (and a stale shard layout) merge into the file one
    in-process run writes: same bytes, each (prompt, seed) once, shard dirs gone."""
    cfg = compose(*TINY, "dataset.limit=3", "generation.seeds=[1,0]", "selector=top_k")
    alone = tmp_path / "alone"
    run_job(cfg, alone)
    job = tmp_path / "job"
    run_job(shard_config(cfg, 0, 3), shard_dir(job, 0, 3))  # a stale layout: merged too
    run_job(shard_config(cfg, 1, 2), shard_dir(job, 1, 2))
    assert not is_complete(cfg, job)
    run_job(shard_config(cfg, 0, 2), shard_dir(job, 0, 2))
    merged = merge(cfg, job, 2)
    assert (job / RECORDS).read_bytes() == (alone / RECORDS).read_bytes()
    assert (job / "job.yaml").read_text() == (alone / "job.yaml").read_text()
    assert is_complete(cfg, job) and not (job / "shards").exists()
    # what the three shard dirs generated (run_job copies nothing from the stale layout, so
    # prompt 0 was generated in two): 0-of-3 prompt 0, 1-of-2 prompt 1, 0-of-2 prompts 0 and 2
    assert len(merged.written) == 6 and merged.timing["records"] == (1 + 1 + 2) * 2
    timing = json.loads((job / "timing.json").read_text())
    assert timing == merged.timing and timing["device"].startswith("cpu")
    again = merge(cfg, job, 2)  # nothing left in shards: nothing rewritten, timing kept
    assert again.written == [] and (job / RECORDS).read_bytes() == (alone / RECORDS).read_bytes()
    assert json.loads((job / "timing.json").read_text()) == timing


def test_growing_a_merged_job_generates_only_the_new_prompts(tmp_path):
    """The plan's growth on a cluster: a pilot sharded and merged, then dataset.limit raised.
    Each shard takes the pilot's records of its prompts from the job dir and generates only
    the new ones; the merged file is the one an in-process run at the new limit writes."""
    pilot = compose(*TINY, "dataset.limit=3", "generation.seeds=[1,0]", "selector=top_k")
    grown = compose(*TINY, "dataset.limit=7", "generation.seeds=[1,0]", "selector=top_k")
    alone = tmp_path / "alone"
    run_job(grown, alone)
    job = tmp_path / "job"
    for cfg, new_records in ((pilot, 3 * 2), (grown, 4 * 2)):
        tasks = [generate_shard([(cfg, job)], i, 2)[0].timing for i in range(2)]
        assert sum(t["records"] for t in tasks) == new_records
        merged = merge(cfg, job, 2)
        assert len(merged.written) == new_records == merged.timing["records"]
    assert (job / RECORDS).read_bytes() == (alone / RECORDS).read_bytes()
    assert (job / "job.yaml").read_text() == (alone / "job.yaml").read_text()
    # timing.json sums both launches: every record of the file generated once
    assert json.loads((job / "timing.json").read_text())["records"] == 7 * 2


def test_a_shard_refuses_a_job_dir_of_another_config_before_generating(tmp_path):
    job = tmp_path / "job"
    run_job(compose(*TINY, "dataset.limit=2", "generation.seeds=[0]", "selector=top_p"), job)
    cfg = compose(*TINY, "dataset.limit=2", "generation.seeds=[0]", "selector=top_k")
    with pytest.raises(JobError, match=f"job dir {job} holds records of a different config"):
        generate_shard([(cfg, job)], 0, 2)
    assert not (shard_dir(job, 0, 2) / RECORDS).exists()


def test_a_shard_dir_is_complete_only_for_its_limit_and_seeds(tmp_path):
    cfg = compose(*TINY, "dataset.limit=4", "generation.seeds=[0]", "selector=top_k")
    run_job(shard_config(cfg, 0, 2), shard_dir(tmp_path, 0, 2))
    assert is_complete(shard_config(cfg, 0, 2), shard_dir(tmp_path, 0, 2))
    for other in ("dataset.limit=6", "generation.seeds=[0,1]", "generation.max_new_tokens=5"):
        grown = compose(*TINY, "dataset.limit=4", "generation.seeds=[0]", "selector=top_k",
                        other)
        assert not is_complete(shard_config(grown, 0, 2), shard_dir(tmp_path, 0, 2)), other
    lines_ = lines(shard_dir(tmp_path, 0, 2) / RECORDS)
    (shard_dir(tmp_path, 0, 2) / RECORDS).write_text("\n".join(lines_[:-1]) + "\n")
    assert not is_complete(shard_config(cfg, 0, 2), shard_dir(tmp_path, 0, 2))


def test_a_foreign_job_dir_is_found_before_submitting_without_a_model(tmp_path, monkeypatch):
    """The launcher's check (check_job_dir) reads only files: a job dir or a shard dir (of
    any layout) holding another config's records is refused; an empty or own one passes."""
    import harness.runner

    monkeypatch.setattr(harness.runner, "load_model", None)  # no model may load
    cfg = compose(*TINY, "dataset.limit=2", "generation.seeds=[0]", "selector=top_k")
    check_job_dir(cfg, tmp_path / "new")
    foreign = {"prompt_id": 1, "seed": 0, "prompt": "p", "continuation": "c", "reference": "r",
               "num_tokens": 1, "finish_reason": "length", "config_hash": "0ther0c0nf1g"}
    for where in (tmp_path / "a", shard_dir(tmp_path / "b", 2, 3)):
        where.mkdir(parents=True)
        (where / RECORDS).write_text(json.dumps(foreign) + "\n")
        job_dir = where if where.name == "a" else tmp_path / "b"
        with pytest.raises(JobError, match=f"job dir {where} holds records of a different"):
            check_job_dir(cfg, job_dir)
        assert (where / RECORDS).read_text() == json.dumps(foreign) + "\n"  # untouched


def test_a_merge_that_cannot_run_now_changes_nothing(tmp_path):
    """A shard still incomplete, or a dir locked (a task of another launch still writes it):
    NotMergeable, and the job dir and shard dirs are as they were."""
    cfg = compose(*TINY, "dataset.limit=3", "generation.seeds=[0]", "selector=top_k")
    job = tmp_path / "job"
    generate_shard([(cfg, job)], 0, 2)
    with pytest.raises(NotMergeable, match="shard 1 of 2 is not complete"):
        merge(cfg, job, 2)
    generate_shard([(cfg, job)], 1, 2)
    def files():  # but the locks, which name their last holder
        return {p: p.read_bytes() for p in job.rglob("*") if p.is_file() and p.name != ".lock"}

    before = files()
    with job_lock(shard_dir(job, 1, 2)), pytest.raises(NotMergeable, match="being written by"):
        merge(cfg, job, 2)
    assert files() == before
    assert len(merge(cfg, job, 2).written) == 3  # the next run merges it


def test_timing_adds_up_over_a_requeue_and_a_resume(tmp_path, monkeypatch):
    """A task requeued mid-shard (submitit's USR2 handler exits inside a write) keeps the
    timing of the batches it wrote; the merged timing.json counts every record generated
    exactly once, the requeue, and the device; a no-op launch leaves it as it was."""
    import harness.runner

    cfg = compose(*TINY, "dataset.limit=6", "generation.seeds=[0,1]", "selector=top_k",
                  "generation.batch_size=2")
    job = tmp_path / "job"
    real_append, calls = harness.runner.append, []

    def requeued_after_two_batches(*args, **kwargs):
        calls.append(1)
        real_append(*args, **kwargs)
        if len(calls) == 2:
            raise SystemExit(-1)  # what submitit's checkpoint_and_try_requeue does

    monkeypatch.setattr(harness.runner, "append", requeued_after_two_batches)
    with pytest.raises(SystemExit):
        generate_shard([(cfg, job)], 0, 2, labels={"task": "7_0", "shard": 0})
    monkeypatch.setattr(harness.runner, "append", real_append)
    generate_shard([(cfg, job)], 0, 2, labels={"task": "7_0", "shard": 0})  # the requeued run
    generate_shard([(cfg, job)], 1, 2, labels={"task": "7_1", "shard": 1})
    merged = merge(cfg, job, 2)
    timing = json.loads((job / "timing.json").read_text())
    records = lines(job / RECORDS)
    assert timing["records"] == len(records) == 12 == len(merged.written)
    assert timing["new_tokens"] == sum(json.loads(r)["num_tokens"] for r in records)
    assert [(t["task"], t["records"], t.get("stopped")) for t in timing["tasks"]] == [
        ("7_0", 4, "interrupted"), ("7_0", 2, None), ("7_1", 6, None)]
    assert timing["requeues"] == 1 and timing["device"].startswith("cpu")
    assert timing["generate_seconds"] == pytest.approx(
        sum(t["generate_seconds"] for t in timing["tasks"]))
    for shard in range(2):  # a launch with everything complete generates and merges nothing
        generate_shard([(cfg, job)], shard, 2)
    merge(cfg, job, 2)
    assert json.loads((job / "timing.json").read_text()) == timing
    assert len(lines(job / "timing_history.jsonl")) == 1


def test_an_in_process_no_op_rerun_keeps_the_timing(tmp_path):
    cfg = compose(*TINY, "dataset.limit=3", "generation.seeds=[0,1]", "selector=top_k")
    run_job(cfg, tmp_path)
    timing = (tmp_path / "timing.json").read_text()
    assert json.loads(timing)["records"] == 6
    run_job(cfg, tmp_path)
    assert (tmp_path / "timing.json").read_text() == timing
    assert len(lines(tmp_path / "timing_history.jsonl")) == 1


def test_resharding_copies_the_old_shards_records(tmp_path):
    """A launch with 3 shards after one with 2 (one of its shards done, one half done) copies
    what the 2-shard dirs hold and generates only the rest; the merge equals an in-process
    run and timing.json counts each record once."""
    cfg = compose(*TINY, "dataset.limit=6", "generation.seeds=[0,1]", "selector=top_k")
    alone = tmp_path / "alone"
    run_job(cfg, alone)
    job = tmp_path / "job"
    generate_shard([(cfg, job)], 0, 2)  # prompts 0, 2, 4
    half = compose(*TINY, "dataset.limit=2", "generation.seeds=[0,1]", "selector=top_k")
    generate_shard([(half, job)], 1, 2)  # prompt 1 only (a launch stopped early, as it were)
    generated = [generate_shard([(cfg, job)], i, 3)[0] for i in range(3)]
    assert sum(len(j.written) for j in generated) == 2 * 2  # prompts 3 and 5
    merge(cfg, job, 3)
    assert (job / RECORDS).read_bytes() == (alone / RECORDS).read_bytes()
    assert json.loads((job / "timing.json").read_text())["records"] == 12
    assert not (job / "shards").exists()


def test_submission_and_task_errors_are_one_line_with_what_to_do():
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from hydra_plugins.harness_plugins.fused_submitit import submission_error, task_error

    sbatch = FailedJobError("sbatch: error: Invalid generic resource (gres) specification\n")
    sbatch.__cause__ = subprocess.CalledProcessError(1, ["sbatch", "x.sh"])
    assert submission_error(sbatch) == (
        "SLURM refused the job array: sbatch: error: Invalid generic resource (gres) "
        "specification; change hydra.launcher.gpus_per_node (or gres) and re-run.")
    ruler = "-" * 22
    traceback = ("Job (task=0) failed during processing with trace:\n" + ruler + "\nTraceback "
                 "(most recent call last):\n  File x\nharness.runner.JobError: generation."
                 "prompt_tokens + generation.max_new_tokens = 9000 exceeds the context\n" + ruler
                 + "\nYou can check full logs with 'job.stderr(0)' and 'job.stdout(0)'")
    assert task_error(FailedJobError(traceback), None) == (
        "generation.prompt_tokens + generation.max_new_tokens = 9000 exceeds the context",
        False)  # an input error: re-running cannot help
    crash = traceback.replace("harness.runner.JobError", "torch.OutOfMemoryError")
    assert task_error(FailedJobError(crash), None)[1] is True

    class Cancelled:
        state = "CANCELLED"

    assert task_error(UncompletedJobError("x"), Cancelled()) == (
        "it ended without a result (state CANCELLED)", True)


def test_the_failure_summary_names_each_distinct_error_once():
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.harness_plugins.sweeper import failure_summary, failures_of

    def failed(message):
        return JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError(message))

    task = "task 5_1 (shard 1 of 2 of 11 jobs) failed: it ended without a result"
    returns = [failed(f"job j{i}: {task}") for i in range(11)]
    returns += [failed("job bad: selector: top_k=0 is out of range"),
                JobReturn(status=JobStatus.COMPLETED)]
    summary = failure_summary(failures_of(returns), len(returns))
    assert summary.startswith(f"12 of 13 jobs failed: jobs j0, j1, j2 and 8 more: {task}; "
                              "job bad: selector: top_k=0 is out of range. Re-run")
    assert summary.count(task) == 1


def test_fused_slurm_takes_the_submitit_plugins_schema_plus_shards():
    from dataclasses import fields

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    import harness.__main__ as entry
    from hydra_plugins.harness_plugins.fused_submitit import FusedSlurmLauncher

    with initialize_config_dir(config_dir=str(entry.CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["hydra/launcher=fused_slurm",
                                                 "hydra.launcher.shards=8",
                                                 "hydra.launcher.gpus_per_node=0",
                                                 "hydra.launcher.partition=gpu"],
                            return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("FusedSlurmLauncher") and launcher.shards == 8
    assert {f.name for f in fields(SlurmQueueConf)} < set(launcher)
    assert launcher.gpus_per_node == 0 and launcher.partition == "gpu"
    with pytest.raises(ValueError, match=r"hydra\.launcher\.shards=0"):
        FusedSlurmLauncher(shards=0)


@pytest.mark.slow
def test_fused_submitit_local_writes_what_an_in_process_run_writes(tmp_path):
    args = ["harness", "-m", *TINY, "dataset.limit=4", "generation.seeds=[0]",
            "selector=top_k,top_p"]
    done = cli(*args, "hydra/launcher=fused_submitit_local", "hydra.launcher.shards=2",
               "hydra.sweep.dir=local", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 tasks to run" in done.stdout + done.stderr
    fused = cli(*args, "hydra/launcher=fused", "hydra.sweep.dir=fused", cwd=tmp_path)
    assert fused.returncode == 0, fused.stderr
    for job in (p.parent for p in (tmp_path / "fused").glob(f"*/{RECORDS}")):
        local = tmp_path / "local" / job.name
        assert (local / RECORDS).read_bytes() == (job / RECORDS).read_bytes()
        assert (local / ".hydra" / "overrides.yaml").exists()
        assert not (local / "shards").exists()
        timing = json.loads((local / "timing.json").read_text())
        assert sorted(t["shard"] for t in timing["tasks"]) == [0, 1]
        assert timing["records"] == 4 == sum(t["records"] for t in timing["tasks"])
    again = cli(*args, "hydra/launcher=fused_submitit_local", "hydra.launcher.shards=2",
                "hydra.sweep.dir=local", cwd=tmp_path)
    assert again.returncode == 0 and "0 tasks to run, 2 complete" in again.stdout + again.stderr


# --- against a real single-node SLURM (tests/slurm/cluster.sh) --------------------------------
# Tiny model, 2 seeds; the node has no GPU, so each task asks 1 CPU and 4 GB.
COMMON = ["model=tiny", "dataset=tiny", "wandb=disabled", "generation.max_new_tokens=12",
          "generation.seeds=[0,1]"]
SLURM = ["hydra/launcher=fused_slurm", "hydra.launcher.shards=2",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=4"]
SWEEP = ["harness.sweep", "seed_comparison", *COMMON, "dataset.limit=6",
         "generation.batch_size=8"]
# The sweep's top_k and top_p on more prompts (records do not depend on the limit): one row per
# forward gives a task long enough to be signalled mid-generation.
TWO_JOBS = ["harness", "-m", "selector=top_k,top_p", *COMMON, "dataset.limit=30"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("slurmctld") is None or shutil.which("slurmdbd") is None:
        pytest.skip("slurm-wlm/slurmdbd not installed: `bash .ci/system-deps` installs it (with "
                    "mariadb-server and munge) to run the SLURM tests")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root (SlurmUser=root): run as root")
    state = Path(tempfile.mkdtemp(prefix="harness-slurm-"))  # pytest's tmp dirs are 0700:
    state.chmod(0o755)  # munged runs as the munge user and must reach its files
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True,
                             text=True)
    assert started.returncode == 0, started.stderr
    os.environ["SLURM_CONF"] = ENV["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    subprocess.run(["bash", str(CLUSTER), "stop", str(state)], check=True)
    shutil.rmtree(state)


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """The seed sweep generated in process by the fused launcher."""
    out = tmp_path_factory.mktemp("reference")
    done = cli(*SWEEP, "hydra.sweep.dir=fused", cwd=out)
    assert done.returncode == 0, done.stderr
    return out / "fused"


def texts(sweep: Path, method: str) -> dict:
    """(prompt_id, seed) -> text of the one job dir of ``method``; asserts each is there once."""
    (job,) = sweep.glob(f"{method},*")
    records = [json.loads(line) for line in lines(job / RECORDS)]
    keys = [(r["prompt_id"], r["seed"]) for r in records]
    assert len(keys) == len(set(keys)), f"{job}: a record written twice"
    return {k: (r["continuation"], r["num_tokens"], r["finish_reason"])
            for k, r in zip(keys, records, strict=True)}


def assert_every_record_once(sweep: Path, reference: Path) -> None:
    """30 prompts x 2 seeds for both jobs, each once, with the reference's texts on its 6."""
    for method in ("top_k", "top_p"):
        mine, theirs = texts(sweep, method), texts(reference, method)
        assert len(mine) == 60 and {k: mine[k] for k in theirs} == theirs


def launch(cwd: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    log = cwd / "launch.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=ENV, stdout=out,
                                   stderr=subprocess.STDOUT, text=True)
    return process, log


def wait_for(condition, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def task_of_shard(log: Path, shard: int) -> str | None:
    for line in log.read_text().splitlines():
        if f": shard {shard} of 2 of" in line and " task " in line:
            return line.split(" task ")[1].split(":")[0]
    return None


def submitted(sweep: Path) -> set[str]:
    """The SLURM ids of the tasks submitted from ``sweep`` (array tasks: ``<array>_<i>``)."""
    return {p.parent.name for p in (sweep / ".submitit").glob("*/*_submitted.pkl")}


def first_records(sweep: Path, shard: int) -> bool:
    """Whether shard ``shard`` of the top_k job has written a batch (its task is mid-run)."""
    return any(p.stat().st_size for p in sweep.glob(f"top_k,*/shards/{shard}-of-2/{RECORDS}"))


def suspended_mid_generation(process: subprocess.Popen, log: Path, sweep: Path) -> list[str]:
    """The two tasks of the launch, each suspended (``scontrol suspend``) once it has written a
    batch, so that both surely still run when the test acts (the VM is slow and often loaded)."""
    tasks = []
    for shard in (0, 1):
        wait_for(lambda shard=shard: first_records(sweep, shard) or process.poll() is not None,
                 600)
        tasks.append(task_of_shard(log, shard))
        subprocess.run(["scontrol", "suspend", tasks[-1]], check=True)
    return tasks


@pytest.mark.slow
@pytest.mark.slurm
def test_the_seed_sweep_runs_as_two_array_tasks_with_the_in_process_records(
        cluster, reference, tmp_path):
    done = cli(*SWEEP, *SLURM, "hydra.sweep.dir=slurm", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "11 jobs in 1 groups x 2 shards: 2 tasks to run" in done.stdout + done.stderr
    tasks = sorted(submitted(tmp_path / "slurm"))
    array = tasks[0].split("_")[0]
    assert tasks == [f"{array}_0", f"{array}_1"]  # one job array of two tasks, not 22 jobs
    jobs = sorted(p.parent.name for p in reference.glob(f"*/{RECORDS}"))
    assert len(jobs) == 11
    for job in jobs:
        mine, theirs = tmp_path / "slurm" / job, reference / job
        assert (mine / RECORDS).read_bytes() == (theirs / RECORDS).read_bytes(), job
        assert (mine / "job.yaml").read_text() == (theirs / "job.yaml").read_text(), job
        assert (mine / ".hydra" / "config.yaml").exists() and not (mine / "shards").exists()
        timing = json.loads((mine / "timing.json").read_text())
        assert [t["task"] for t in sorted(timing["tasks"], key=lambda t: t["shard"])] == tasks
    from analysis.__main__ import analyse, load_config

    config = load_config(["metrics.coherence.scorer=tiny", "metrics.mauve.kmeans_seeds=1",
                          "wandb=disabled"])
    mine, theirs = analyse([tmp_path / "slurm"], config), analyse([reference], config)
    assert mine.drop(columns="job").equals(theirs.drop(columns="job"))  # job: the dirs' paths


@pytest.mark.slow
@pytest.mark.slurm
def test_a_task_preempted_by_usr2_is_requeued_and_resumes(cluster, reference, tmp_path):
    sweep = tmp_path / "slurm"
    process, log = launch(tmp_path, *TWO_JOBS, "generation.batch_size=1", *SLURM,
                          f"hydra.sweep.dir={sweep}")
    wait_for(lambda: first_records(sweep, 1) or process.poll() is not None)
    task = task_of_shard(log, 1)
    subprocess.run(["scancel", "--signal=USR2", task], check=True)  # SLURM's pre-timeout signal
    assert process.wait(timeout=240) == 0, log.read_text()
    assert "Requeued job" in (sweep / ".submitit" / task / f"{task}_0_log.out").read_text()
    history = subprocess.run(["sacct", "-D", "-n", "-X", "-j", task, "-o", "State"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert history == ["REQUEUED", "COMPLETED"]
    assert_every_record_once(sweep, reference)
    for job in sweep.glob("top_*"):  # the batches before the signal count too
        timing = json.loads((job / "timing.json").read_text())
        assert timing["records"] == 60, job
    (top_k,) = sweep.glob("top_k,*")
    assert json.loads((top_k / "timing.json").read_text())["requeues"] == 1


@pytest.mark.slow
@pytest.mark.slurm
def test_a_cancelled_task_alone_is_resubmitted_by_the_same_command(cluster, reference, tmp_path):
    command = [*TWO_JOBS, "generation.batch_size=1", *SLURM, "hydra.sweep.dir=slurm"]
    sweep = tmp_path / "slurm"
    process, log = launch(tmp_path, *command)
    wait_for(lambda: first_records(sweep, 1) or process.poll() is not None)
    cancelled = task_of_shard(log, 1)
    subprocess.run(["scancel", cancelled], check=True)
    assert process.wait(timeout=240) != 0
    output = log.read_text()
    assert f"task {cancelled} (shard 1 of 2 of 2 jobs" in output
    assert "ended without a result" in output and "re-run the same command" in output
    before = submitted(sweep)
    again = cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 tasks to run, 1 complete" in again.stdout + again.stderr
    assert len(submitted(sweep) - before) == 1  # the missing task alone
    assert_every_record_once(sweep, reference)
    for job in sweep.glob("top_*"):  # both launches' tasks, the cancelled one's batch too
        assert json.loads((job / "timing.json").read_text())["records"] == 60, job
    (top_k,) = sweep.glob("top_k,*")
    assert len(json.loads((top_k / "timing.json").read_text())["tasks"]) == 3


@pytest.mark.slow
@pytest.mark.slurm
def test_a_foreign_job_dir_is_left_out_and_the_other_job_runs(cluster, tmp_path):
    """A job dir holding another config's records (in a shard dir of its layout) is refused
    before anything is submitted, on its own line; the other job of its group runs and is
    merged and tracked (before: every job of the group failed, each task after loading the
    model)."""
    sweep = tmp_path / "slurm"
    stale = sweep / "top_p,dataset=tiny,generation.max_new_tokens=12,model=tiny" / "shards"
    (stale / "1-of-2").mkdir(parents=True)
    foreign = json.dumps({
        "prompt_id": 1, "seed": 0, "prompt": "p", "continuation": "c", "reference": "r",
        "num_tokens": 1, "finish_reason": "length", "config_hash": "0ther0c0nf1g"}) + "\n"
    (stale / "1-of-2" / RECORDS).write_text(foreign)
    done = cli(*TWO_JOBS, "generation.batch_size=4", *SLURM, f"hydra.sweep.dir={sweep}",
               cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output
    (summary,) = [line for line in output.splitlines() if "jobs failed" in line]
    assert summary.startswith("1 of 2 jobs failed: job top_p,") and "left out" in summary
    assert "holds records of a different config" in summary
    assert "2 jobs in 1 groups x 2 shards: 2 tasks to run" in output
    assert len(submitted(sweep)) == 2  # top_k's two shards; nothing of top_p
    (top_k,) = sweep.glob("top_k,*")
    assert len(lines(top_k / RECORDS)) == 60 and (top_k / ".hydra").is_dir()
    assert json.loads((top_k / "timing.json").read_text())["records"] == 60
    assert (stale / "1-of-2" / RECORDS).read_text() == foreign  # kept as it was


@pytest.mark.slow
@pytest.mark.slurm
def test_a_relaunch_after_the_launcher_dies_re_attaches_to_the_running_tasks(
        cluster, reference, tmp_path):
    """kill -9 of the launcher mid-generation, then the same command at once: the tasks still
    running are waited for, not submitted again (before: 2 new tasks stopped on their locks,
    every job failed); the merge counts both tasks' timing."""
    command = [*TWO_JOBS, "generation.batch_size=1", *SLURM, "hydra.sweep.dir=slurm"]
    sweep = tmp_path / "slurm"
    process, first = launch(tmp_path, *command)
    tasks = suspended_mid_generation(process, first, sweep)  # still run when the relaunch looks
    process.kill()
    process.wait()
    before = submitted(sweep)
    relaunch = tmp_path / "relaunch"
    relaunch.mkdir()
    again, log = launch(relaunch, *command[:-1], f"hydra.sweep.dir={sweep}")
    wait_for(lambda: log.read_text().count("re-attached") == 2 or again.poll() is not None)
    for task in tasks:
        subprocess.run(["scontrol", "resume", task], check=True)
    assert again.wait(timeout=300) == 0, log.read_text()
    assert "2 still running from an earlier launch" in log.read_text()
    assert submitted(sweep) == before  # nothing submitted twice
    assert_every_record_once(sweep, reference)
    for job in sweep.glob("top_*"):
        timing = json.loads((job / "timing.json").read_text())
        assert timing["records"] == 60 and len(timing["tasks"]) == 2, job


@pytest.mark.slow
@pytest.mark.slurm
def test_ctrl_c_on_the_launcher_says_the_tasks_run_on_and_a_rerun_re_attaches(
        cluster, reference, tmp_path):
    command = [*TWO_JOBS, "generation.batch_size=1", *SLURM, "hydra.sweep.dir=slurm"]
    sweep = tmp_path / "slurm"
    process, log = launch(tmp_path, *command)
    tasks = suspended_mid_generation(process, log, sweep)  # still run when the re-run looks
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    output = log.read_text()
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "keep running" in line]
    array = sorted(submitted(sweep))[0].split("_")[0]
    assert "re-running the same command re-attaches" in line and f"scancel {array}" in line
    relaunch = tmp_path / "relaunch"
    relaunch.mkdir()
    again, again_log = launch(relaunch, *command[:-1], f"hydra.sweep.dir={sweep}")
    wait_for(lambda: again_log.read_text().count("re-attached") == 2 or again.poll() is not None)
    for task in tasks:
        subprocess.run(["scontrol", "resume", task], check=True)
    assert again.wait(timeout=300) == 0, again_log.read_text()
    assert len(submitted(sweep)) == 2
    assert_every_record_once(sweep, reference)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_held_lock_at_the_merge_leaves_that_job_for_the_next_run(cluster, tmp_path):
    """A job dir locked by another process when its shards are merged: that job is reported
    on its own line and left as it is; the other job is merged and tracked; the next run
    merges it without generating anything (before: a traceback mid-merge, none tracked)."""
    command = [*TWO_JOBS, "generation.batch_size=1", *SLURM, "hydra.sweep.dir=slurm"]
    sweep = tmp_path / "slurm"
    top_p = sweep / "top_p,dataset=tiny,generation.max_new_tokens=12,model=tiny"
    process, log = launch(tmp_path, *command)
    # held mid-generation: a lock taken before the launch is refused before submitting
    # (preflight), not at the merge this test is about
    tasks = suspended_mid_generation(process, log, sweep)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from harness.runner import job_lock\n"
        f"with job_lock(Path({str(top_p)!r})):\n    print('held', flush=True); time.sleep(600)")],
        env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for task in tasks:
            subprocess.run(["scontrol", "resume", task], check=True)
        process.wait(timeout=600)
    finally:
        holder.kill()
        holder.wait()
    output = log.read_text()
    assert process.returncode == 1 and "Traceback" not in output, output
    (summary,) = [line for line in output.splitlines() if "jobs failed" in line]
    assert summary.startswith("1 of 2 jobs failed: job top_p,") and "not merged now" in summary
    assert "being written by" in summary
    (top_k,) = sweep.glob("top_k,*")
    assert len(lines(top_k / RECORDS)) == 60 and (top_k / ".hydra").is_dir()
    assert not (top_p / RECORDS).exists() and len(list(top_p.glob("shards/*"))) == 2
    again = cli(*command, cwd=tmp_path)
    assert again.returncode == 0 and "0 tasks to run, 2 complete" in again.stdout + again.stderr
    assert len(lines(top_p / RECORDS)) == 60
    for job in (top_k, top_p):
        assert json.loads((job / "timing.json").read_text())["records"] == 60


@pytest.mark.slow
@pytest.mark.slurm
def test_submission_and_input_errors_are_one_line_each(cluster, tmp_path):
    """sbatch refusing the array (a GPU on a node without one): SLURM's message and the key,
    no traceback. A task's input error (more new tokens than the model's context) for a
    group of 2 jobs x 2 shards: each task's failure logged on its own line, the summary says
    it once naming both jobs, and no "re-run to resume" (a re-run cannot fix it)."""
    sbatch = cli(*TWO_JOBS, *SLURM, "hydra.launcher.gpus_per_node=1", "hydra.sweep.dir=a",
                 cwd=tmp_path)
    output = sbatch.stdout + sbatch.stderr
    assert sbatch.returncode == 1 and "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "SLURM refused" in line]
    assert "sbatch: error:" in line and "hydra.launcher.gpus_per_node" in line
    too_long = cli(*TWO_JOBS, *SLURM, "generation.max_new_tokens=600", "hydra.sweep.dir=b",
                   cwd=tmp_path)
    output = too_long.stdout + too_long.stderr
    assert too_long.returncode == 1 and "Traceback" not in output
    (summary,) = [line for line in output.splitlines() if "jobs failed" in line]
    assert summary.startswith("2 of 2 jobs failed: jobs top_k,")
    assert summary.count("exceeds the context") == 1  # once, not per job or per task
    assert "resume it" not in summary and len(summary) < 1500
    assert len([line for line in output.splitlines() if line.startswith("[")
                and "exceeds the context" in line]) == 2  # each task's own log line
