"""Jobs: generate continuations of a dataset's prompts with selectors, resumably.

A job dir holds ``job.yaml`` (the resolved config and its hash), ``generations.jsonl`` (one
record per (prompt, seed), appended and flushed batch by batch; format in ``harness.records``)
and ``timing.json``. Re-running the same job skips the finished pairs, so a killed job loses at
most the batch in flight. One process writes a job dir at a time (an ``flock`` on its
``.lock``); a second one stops at once, naming the holder.

A record is a pure function of (model, prompt, selector config, seed, max_new_tokens): sampling
is keyed (``harness.sampling``), so batch size, dataset limit, shards and fusion with other
jobs never change a text. ``generate_jobs`` therefore runs any number of jobs that share model,
dataset and generation settings as one batched generation: rows = prompts x seeds x jobs,
``generation.batch_size`` rows per forward pass, each job's selector on its own rows.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import StoppingCriteria

from harness import decode
from harness.data import DatasetConfig, load_prompts
from harness.decode import Row
from harness.models import ModelConfig, load_model
from harness.records import JOB, LOCK, RECORDS, TIMING, open_append, parse, quarantine
from harness.sampling import SAMPLER_VERSION
from harness.selectors import Selector, make_selector
from harness.tracking import WandbConfig, wandb_run

log = logging.getLogger(__name__)

# Keys that do not change what a (prompt, seed) record holds, so changing them keeps resuming.
UNHASHED = ("sweep", "wandb", "generation.seeds", "generation.samples_to_log",
            "generation.batch_size", "generation.compile", "model.device", "dataset.limit")


@dataclass
class GenerateConfig:
    """``conf/generation/*.yaml``."""

    prompt_tokens: int = 32
    max_new_tokens: int = 64
    # rows (prompt x seed x job) per forward pass, fused or not; or "auto": the largest batch
    # that fits the device's free memory (harness.decode.auto_batch_size)
    batch_size: Any = 8
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    diagnostics: bool = True
    samples_to_log: int = 16  # rows of the W&B sample table
    compile: bool = False  # torch.compile the decode step (CUDA graphs on a GPU; harness.decode)


@dataclass
class JobConfig:
    """The whole job, ``conf/config.yaml``; each field is one config group."""

    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    selector: dict[str, Any] = MISSING  # method + that method's parameters
    generation: GenerateConfig = MISSING
    wandb: WandbConfig = MISSING
    sweep: str = "adhoc"


class JobError(ValueError):
    """A problem with the job's input; its message says what, which key, and what to do."""


class Terminated(Exception):
    """SIGTERM (SLURM's preemption or time limit) arrived; finished batches are written."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


def build_selector(selector_cfg: dict[str, Any]) -> Selector:
    params = dict(selector_cfg)
    return make_selector(params.pop("method"), **params)


def _without(cfg: DictConfig, dotted_keys: tuple[str, ...]) -> dict:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        node = resolved
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return resolved


def config_hash(cfg: DictConfig) -> str:
    """What a record is a function of (plus the sampler's version): records of another hash are
    never mixed into a job dir."""
    content = {**_without(cfg, UNHASHED), "sampler": SAMPLER_VERSION}
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def shared_settings(cfg: DictConfig) -> str:
    """Jobs with equal keys can run as one batched generation: same model, prompts, lengths."""
    content = _without(cfg, ("selector", "sweep", "wandb", "generation.seeds",
                             "generation.samples_to_log", "generation.batch_size"))
    return json.dumps(content, sort_keys=True)


def validate(cfg: DictConfig) -> Selector:
    """Every check that needs no model, so bad input fails in seconds."""
    gen = cfg.generation
    for key in ("prompt_tokens", "max_new_tokens", "batch_size"):
        if key == "batch_size" and gen[key] == "auto":
            continue
        if isinstance(gen[key], bool) or not isinstance(gen[key], int) or gen[key] < 1:
            raise JobError(f"generation.{key}={gen[key]} must be an integer >= 1"
                           + (" or auto." if key == "batch_size" else "."))
    seeds = list(gen.seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise JobError(f"generation.seeds={seeds} must be a non-empty list of distinct integers "
                       ">= 0.")
    try:
        return build_selector(cfg.selector)
    except ValueError as error:
        raise JobError(f"selector: {error}") from error


@contextmanager
def job_lock(job_dir: Path) -> Iterator[None]:
    """Hold ``job_dir/.lock`` exclusively (``flock``; the kernel drops it when the process
    dies, ``kill -9`` included). A second holder fails at once, naming the first."""
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / LOCK
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise JobError(
                f"job dir {job_dir} is being written by {holder}. Two writers would write every "
                "record twice: wait for that run to end (re-running then resumes) or stop it. "
                f"If no such process exists (a dead node of a shared file system), delete {path}."
            ) from None
        except OSError as error:
            raise JobError(
                f"cannot lock {path} ({error}): this file system does not support flock (Lustre "
                "mounted with noflock?). Put hydra.sweep.dir / hydra.run.dir on one that does."
            ) from error
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()} pid {os.getpid()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_records(path: Path, expected_hash: str) -> dict[tuple[int, int], dict]:
    """Finished records by (prompt_id, seed). Records of another config are refused, never
    touched; corrupt or duplicated lines are quarantined; a torn last line is cut off."""
    parsed = parse(path)
    for record in parsed.records:
        if record["config_hash"] != expected_hash:
            raise JobError(
                f"job dir {path.parent} holds records of a different config (hash "
                f"{record['config_hash']}, this job is {expected_hash}; records of an older "
                "sampler count as different). Its records are kept as they are: run this config "
                "in another dir (hydra.run.dir=... or hydra.sweep.dir=...), or delete that dir to "
                "start it over."
            )
    if parsed.rejected:
        quarantine(path, parsed)
    elif parsed.torn:
        log.warning("%s: dropping a torn last line left by an interrupted run", path)
        os.truncate(path, path.stat().st_size - len(parsed.torn))
    return {(r["prompt_id"], r["seed"]): r for r in parsed.records}


@dataclass
class Job:
    """One job of a generation: its config, dir, selector, and what this run wrote."""

    cfg: DictConfig
    dir: Path
    name: str
    selector: Selector
    digest: str
    seeds: list[int]
    done: dict = field(default_factory=dict)
    written: list[dict] = field(default_factory=list)
    new_tokens: int = 0
    timing: dict = field(default_factory=dict)


class StopOnSignal(StoppingCriteria):
    """Ends decoding (``harness.decode``, or ``generate``) at the next step once a signal was
    received (set ``signum``)."""

    signum: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.signum is not None, dtype=torch.bool,
                          device=input_ids.device)


@contextmanager
def sigterm_stops(stop: StopOnSignal) -> Iterator[None]:
    """SIGTERM sets ``stop.signum`` (from the main thread only, where Python delivers it)."""
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: setattr(
            stop, "signum", signum))
    except ValueError:  # not the main thread: leave signals to it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def append(job: Job, out: Any, records: list[dict]) -> None:
    text = "".join(json.dumps({**r, "config_hash": job.digest}) + "\n" for r in records)
    try:
        out.write(text)
        out.flush()
    except OSError as error:
        raise JobError(
            f"could not append to {job.dir / RECORDS} ({error}). The records written before are "
            "intact (a torn last line is cut off on resume): free space, then re-run the same "
            "command to resume."
        ) from error
    job.written += records
    job.new_tokens += sum(r["num_tokens"] for r in records)


def generate_jobs(specs: list[tuple[DictConfig, Path, str]]) -> list[Job]:
    """Generate (or finish generating) the records of every job of ``specs`` (config, dir,
    name) as one batched generation; the jobs must share ``shared_settings``. Every dir is
    locked for the whole generation; SIGTERM ends it after the batch in flight is dropped,
    raising ``Terminated`` with every finished batch written."""
    jobs = []
    for cfg, job_dir, name in specs:
        selector = validate(cfg)
        seeds = list(cfg.generation.seeds)
        jobs.append(Job(cfg, job_dir, name, selector, config_hash(cfg),
                        seeds[:1] if selector.name == "greedy" else seeds))  # greedy draws nothing
    if len({shared_settings(job.cfg) for job in jobs}) > 1:
        raise ValueError("generate_jobs: these jobs differ in model, dataset or generation "
                         "settings; group them with shared_settings first.")
    first = jobs[0].cfg
    gen: GenerateConfig = OmegaConf.to_object(first.generation)
    with ExitStack() as stack:
        for job in jobs:
            stack.enter_context(job_lock(job.dir))
        for job in jobs:
            job.done = read_records(job.dir / RECORDS, job.digest)
        loaded = load_model(OmegaConf.to_object(first.model))
        needed = gen.prompt_tokens + gen.max_new_tokens
        if needed > loaded.max_length:
            raise JobError(
                f"generation.prompt_tokens + generation.max_new_tokens = {needed} exceeds the "
                f"context of model {first.model.name!r} ({loaded.max_length} tokens); lower them."
            )
        prompts = load_prompts(OmegaConf.to_object(first.dataset), loaded.tokenizer,
                               gen.prompt_tokens, gen.max_new_tokens)
        for job in jobs:
            (job.dir / JOB).write_text(OmegaConf.to_yaml({
                **OmegaConf.to_container(job.cfg, resolve=True), "config_hash": job.digest,
                "sampler": SAMPLER_VERSION, "prompts": len(prompts), "seeds_run": job.seeds}))
        rows = [Row(job, prompt, seed) for job in jobs for seed in job.seeds for prompt in prompts
                if (prompt.prompt_id, seed) not in job.done]
        total = sum(len(job.seeds) for job in jobs) * len(prompts)
        files = {id(job): stack.enter_context(open_append(job.dir / RECORDS)) for job in jobs}
        sizes = {job.cfg.generation.batch_size for job in jobs}
        batch_size = "auto" if "auto" in sizes else min(sizes)
        stop = StopOnSignal()
        stack.enter_context(sigterm_stops(stop))
        desc = jobs[0].name if len(jobs) == 1 else f"{len(jobs)} jobs fused"
        bar = stack.enter_context(tqdm(total=total, initial=total - len(rows), desc=desc,
                                       unit="row", dynamic_ncols=True))
        started = time.perf_counter()

        def write(batch: list[Row], records: list[dict]) -> None:
            for job in jobs:
                mine = [rec for row, rec in zip(batch, records, strict=True) if row.job is job]
                if mine:
                    append(job, files[id(job)], mine)
            tokens = sum(job.new_tokens for job in jobs)
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
            bar.update(len(batch))

        jobs_rows = [[row for row in rows if row.job is job] for job in jobs]
        used = decode.generate(loaded, jobs_rows, gen, batch_size, stop, write)
        if stop.signum is not None:
            raise Terminated(stop.signum)
        batch_size = used or batch_size
        seconds = time.perf_counter() - started
        tokens = sum(job.new_tokens for job in jobs)
        for job in jobs:  # this invocation's
            job.timing = {"generate_seconds": seconds, "new_tokens": job.new_tokens,
                          "records": len(job.written), "fused_jobs": len(jobs),
                          "fused_new_tokens": tokens, "rows_per_forward": batch_size,
                          "tokens_per_s": tokens / seconds if rows else 0.0}
            (job.dir / TIMING).write_text(json.dumps(job.timing) + "\n")
    return jobs


# Jobs that the fused launcher generated in this process, by dir: run_job only tracks them.
PREGENERATED: dict[Path, Job] = {}


def pregenerate(jobs: list[tuple[Path, DictConfig]]) -> None:
    """The fused launcher's first pass: generate the records of ``jobs`` (dir, config), one
    batched generation per group of shared settings. A job with a bad value is left to its
    own run, which reports it; a group that stops (a held lock, ...) is logged and its jobs
    then run one by one, resuming whatever it wrote."""
    groups: dict[str, list[tuple[DictConfig, Path, str]]] = {}
    for job_dir, cfg in jobs:
        try:
            validate(cfg)
        except JobError:
            continue
        groups.setdefault(shared_settings(cfg), []).append((cfg, job_dir, job_dir.name))
    for specs in groups.values():
        try:
            for job in generate_jobs(specs):
                PREGENERATED[job.dir.resolve()] = job
        except (ValueError, FloatingPointError, FileNotFoundError, RuntimeError) as error:
            log.warning("fused generation of %d jobs stopped: %s They run one by one now.",
                        len(specs), error)


def track(job: Job, wandb_dir: Path) -> None:
    """The job's W&B run: config, timing and a table of sample generations. Never fails the
    job (see ``harness.tracking``)."""
    cfg = job.cfg
    with wandb_run(OmegaConf.to_object(cfg.wandb), wandb_dir,
                   config=OmegaConf.to_container(cfg, resolve=True), job_type="generate",
                   group=cfg.sweep, name=job.name,
                   tags=[job.selector.name, cfg.model.name, cfg.dataset.name]) as run:
        if run is None:
            return
        (job.dir / "wandb_run_id").write_text(run.id)
        run.summary_update(job.timing)
        samples = job.written[: cfg.generation.samples_to_log]
        if samples:
            columns = ["prompt_id", "seed", "prompt", "continuation", "reference"]
            run.log_table("samples", columns, [[s[c] for c in columns] for s in samples])


def run_job(cfg: DictConfig, job_dir: Path, wandb_dir: Path | None = None,
            name: str | None = None) -> Path:
    """Generate (or finish generating) ``job_dir/generations.jsonl`` for ``cfg``, then track it."""
    job = PREGENERATED.pop(job_dir.resolve(), None)
    if job is None:
        job = generate_jobs([(cfg, job_dir, name or job_dir.name)])[0]
    track(job, wandb_dir or job_dir)
    return job_dir / RECORDS
