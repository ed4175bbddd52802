"""The cluster launchers (``hydra/launcher=fused_slurm``, ``fused_submitit_local``): shard
layout and merge on disk, a local run, and the SLURM integration tests against the single-node
cluster of tests/slurm/cluster.sh (``-m slurm``; ``make test-slow`` and CI run them)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from harness.records import RECORDS
from harness.runner import run_job
from harness.shards import is_complete, merge, shard_config, shard_dir
from tests.conftest import ROOT, TINY, compose

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, env=ENV)


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
    overrides = (*TINY, "dataset.limit=5", "generation.seeds=[1,0]", "selector=top_k")
    cfg = compose(*overrides)
    alone = tmp_path / "alone"
    run_job(cfg, alone)
    job = tmp_path / "job"
    assert not is_complete(cfg, job)
    for shard in (2, 0):  # shard 1 of 3 is missing
        run_job(shard_config(cfg, shard, 3), shard_dir(job, shard, 3))
    run_job(shard_config(cfg, 1, 2), shard_dir(job, 1, 2))  # a stale layout: also merged
    assert not is_complete(cfg, job)
    run_job(shard_config(cfg, 1, 3), shard_dir(job, 1, 3))
    merged = merge(cfg, job, 3, [])
    assert (job / RECORDS).read_bytes() == (alone / RECORDS).read_bytes()
    assert (job / "job.yaml").read_text() == (alone / "job.yaml").read_text()
    assert is_complete(cfg, job) and not (job / "shards").exists()
    assert len(merged.written) == 10 and merged.timing["records"] == 0
    again = merge(cfg, job, 3, [])  # nothing left in shards: nothing rewritten
    assert again.written == [] and (job / RECORDS).read_bytes() == (alone / RECORDS).read_bytes()


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
