"""Shards of a job dir: how the cluster launchers (``hydra/launcher=fused_slurm``,
``fused_submitit_local``) split a group of jobs over tasks, and how each job dir becomes whole.

Shard i of n of a job writes into ``<job dir>/shards/<i>-of-<n>/``, a job dir of its own: the
job's config with its prompts cut to shard i of n (``dataset.shard``/``num_shards``), with its
own ``.lock``, ``generations.jsonl``, ``job.yaml`` and ``timing.json``. So tasks never share a
lock or a file, a requeued or resubmitted task resumes its own dir with the runner's own
resume, and while a study runs the analysis already reads the finished shards with no flag
(it merges dirs of one configuration; shards are not part of that identity).

Once every shard of a job is complete, ``merge`` writes its records into the job dir, in the
order and with the config hash one in-process run writes, and removes the shard dirs: the job
dir is then the one an in-process run leaves. A record is a pure function of (config, prompt,
seed), so the texts are those of the in-process run. Growing a merged job (a larger
``dataset.limit``, more seeds) starts new shard dirs, which copy the job dir's records of their
prompts before generating the rest: the pilot is never generated twice; so do the shard dirs
of another number of shards (a launch with another ``hydra.launcher.shards``).

Timing: every task invocation that wrote records appends its timing to its shard dir's
``timing_history.jsonl``, also when a signal or a requeue stopped it. The merge sums the
shards' (``timing``) into one entry of the job dir's history and writes ``timing.json`` as the
sum of all its merges, so its ``records`` are the records the tasks generated, whatever was
killed, cancelled, requeued or relaunched on the way; a launch that generated nothing leaves
both as they were.
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from pathlib import Path

import yaml
from omegaconf import DictConfig, open_dict

from harness.records import JOB, RECORDS, SHARD_NAME, SHARDS, TIMING, parse, rewrite
from harness.runner import (
    Job,
    JobError,
    config_hash,
    generate_jobs,
    job_lock,
    read_records,
    validate,
    write_job_yaml,
)
from harness.tracking import TIMINGS


def shard_dir(job_dir: Path, shard: int, shards: int) -> Path:
    return job_dir / SHARDS / f"{shard}-of-{shards}"


def shard_config(cfg: DictConfig, shard: int, shards: int) -> DictConfig:
    """``cfg`` on shard ``shard`` of ``shards`` of its prompts. A job already on shard s of m
    (``dataset.shard``) is cut further: shard i of n of shard s of m is shard s + m·i of m·n."""
    out = cfg.copy()
    with open_dict(out):
        out.dataset.shard = cfg.dataset.shard + cfg.dataset.num_shards * shard
        out.dataset.num_shards = cfg.dataset.num_shards * shards
    return out


def is_complete(cfg: DictConfig, job_dir: Path) -> bool:
    """Whether ``job_dir`` holds every record of ``cfg`` (read from disk, no model): its
    ``job.yaml`` is of this config, prompt limit and seeds, and it has a record per prompt and
    seed it names."""
    try:
        meta = yaml.safe_load((job_dir / JOB).read_text())
    except FileNotFoundError:
        return False
    if (meta.get("config_hash") != config_hash(cfg)
            or meta["dataset"]["limit"] != cfg.dataset.limit
            or meta["generation"]["seeds"] != list(cfg.generation.seeds)):
        return False
    seeds = set(meta["seeds_run"])
    pairs = {(r["prompt_id"], r["seed"]) for r in parse(job_dir / RECORDS).records
             if r["seed"] in seeds and r["config_hash"] == meta["config_hash"]}
    return len(pairs) == meta["prompts"] * len(seeds)


def shard_is_complete(cfg: DictConfig, job_dir: Path, shard: int, shards: int) -> bool:
    return is_complete(cfg, job_dir) or is_complete(shard_config(cfg, shard, shards),
                                                    shard_dir(job_dir, shard, shards))


def shard_dirs(job_dir: Path) -> list[tuple[Path, int, int]]:
    """Every shard dir of ``job_dir`` with its (shard, shards), of any number of shards (an
    earlier launch may have used another ``hydra.launcher.shards``)."""
    found = []
    for path in sorted((job_dir / SHARDS).glob("*-of-*")):
        match = SHARD_NAME.fullmatch(path.name)
        if match and path.is_dir():
            found.append((path, int(match[1]), int(match[2])))
    return found


def check_job_dir(cfg: DictConfig, job_dir: Path) -> None:
    """Raise ``JobError`` if ``job_dir`` or one of its shard dirs holds records of another
    config: what a task would refuse after loading the model, found from the files alone (the
    launcher leaves such a job out before submitting anything)."""
    read_records(job_dir / RECORDS, config_hash(cfg), repair=False)
    for path, shard, shards in shard_dirs(job_dir):
        read_records(path / RECORDS, config_hash(shard_config(cfg, shard, shards)), repair=False)


def generate_shard(specs: list[tuple[DictConfig, Path]], shard: int, shards: int,
                   labels: dict | None = None) -> list[Job]:
    """One task: generate (or finish) shard ``shard`` of ``shards`` of every job of
    ``specs`` (config, job dir; one group of shared settings) as one batched generation,
    its timing labelled with ``labels`` (the task). Records the job dir already holds (a pilot
    merged before ``dataset.limit`` grew), or shard dirs of another number of shards hold (an
    earlier launch), are copied into the shard, not generated again."""
    copy_from = {}
    for cfg, job_dir in specs:
        sources = [(job_dir / RECORDS, config_hash(cfg))]
        sources += [(path / RECORDS, config_hash(shard_config(cfg, i, n)))
                    for path, i, n in shard_dirs(job_dir) if (i, n) != (shard, shards)]
        copy_from[shard_dir(job_dir, shard, shards)] = sources
    return generate_jobs(
        [(shard_config(cfg, shard, shards), shard_dir(job_dir, shard, shards), job_dir.name)
         for cfg, job_dir in specs], copy_from=copy_from, labels=labels)


class NotMergeable(JobError):
    """A job's shards cannot be merged now (one is incomplete or locked): a later run merges."""


def merge(cfg: DictConfig, job_dir: Path, shards: int) -> Job:
    """Write the records of ``cfg``'s shard dirs into ``job_dir`` (next to those already
    there; each (prompt, seed) once, in the order of an in-process run, with the job's config
    hash), its ``job.yaml`` and, if the shards generated anything, its timing (``timing``),
    then remove the shard dirs. Every shard of ``shards`` must be complete (else
    ``NotMergeable``, as when a dir is locked: nothing is changed). Returns the job as the
    runner's ``run_job`` tracks it. A kill at any point leaves the records readable and
    resumable: the shard dirs go only after the merged file is written."""
    selector = validate(cfg)
    digest = config_hash(cfg)
    if is_complete(cfg, job_dir):
        metas = [yaml.safe_load((job_dir / JOB).read_text())]
    else:
        missing = [i for i in range(shards)
                   if not is_complete(shard_config(cfg, i, shards), shard_dir(job_dir, i, shards))]
        if missing:
            raise NotMergeable(f"job dir {job_dir}: shard {missing[0]} of {shards} is not "
                               "complete, so its shards are not merged yet.")
        metas = [yaml.safe_load((shard_dir(job_dir, i, shards) / JOB).read_text())
                 for i in range(shards)]
    seeds = metas[0]["seeds_run"]
    dirs = shard_dirs(job_dir)
    with ExitStack() as stack:
        try:
            for path in (job_dir, *(path for path, _, _ in dirs)):
                stack.enter_context(job_lock(path))
        except JobError as error:
            raise NotMergeable(str(error)) from None
        records = read_records(job_dir / RECORDS, digest)
        new = []
        for path, shard, count in dirs:  # shard dirs of another number of shards too
            sharded = shard_config(cfg, shard, count)
            for key, record in read_records(path / RECORDS, config_hash(sharded)).items():
                if key not in records:
                    records[key] = {**record, "config_hash": digest}
                    new.append(records[key])
        if new:
            order = {seed: i for i, seed in enumerate(seeds)}
            rewrite(job_dir / RECORDS, sorted(records.values(), key=lambda r: (
                order.get(r["seed"], len(order)), r["seed"], r["prompt_id"])))
        tasks = [entry for path, _, _ in dirs for entry in history(path)]
        merged = timing(tasks) if tasks else {}
        job = Job(cfg, job_dir, job_dir.name, selector, digest, seeds, written=new,
                  new_tokens=sum(r["num_tokens"] for r in new), timing=merged)
        write_job_yaml(job, sum(meta["prompts"] for meta in metas))
        if tasks:  # a launch that generated nothing leaves the timing as it was
            with (job_dir / TIMINGS).open("a") as out:
                out.write(json.dumps(merged) + "\n")
            (job_dir / TIMING).write_text(json.dumps(timing(history(job_dir))) + "\n")
        for path, _, _ in dirs:
            shutil.rmtree(path)
    if (job_dir / SHARDS).is_dir() and not any((job_dir / SHARDS).iterdir()):
        (job_dir / SHARDS).rmdir()
    return job


def history(job_dir: Path) -> list[dict]:
    """``timing_history.jsonl`` of a dir: each invocation that wrote records (a torn last line
    of a killed writer is skipped)."""
    path = job_dir / TIMINGS
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def timing(entries: list[dict]) -> dict:
    """The sum of task invocations (or of merges, each holding its tasks): seconds summed
    over tasks (so ``tokens_per_s`` is per task), records, tokens, the invocations that a
    signal or a requeue stopped (``requeues``; their batches count), the devices, and each
    task invocation under ``tasks``. A merged job dir's ``timing.json`` is this sum over all
    its merges, so its ``records`` are the records its tasks generated."""
    tasks = [task for entry in entries for task in entry.get("tasks", [entry])]
    seconds = sum(t["generate_seconds"] for t in tasks)
    fused = sum(t["fused_new_tokens"] for t in tasks)
    return {"generate_seconds": seconds, "new_tokens": sum(t["new_tokens"] for t in tasks),
            "records": sum(t["records"] for t in tasks),
            "fused_jobs": max((t["fused_jobs"] for t in tasks), default=0),
            "fused_new_tokens": fused,
            "rows_per_forward": max((t["rows_per_forward"] for t in tasks), default=0),
            "tokens_per_s": fused / seconds if seconds else 0.0,
            "device": "; ".join(sorted({t["device"] for t in tasks if t.get("device")})),
            "requeues": sum(1 for t in tasks if t.get("stopped")), "tasks": tasks}
