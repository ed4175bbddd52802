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

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import StoppingCriteria

from harness import decode, identity
from harness.data import DatasetConfig, Prompt, check_dataset, load_prompts
from harness.decode import Row
from harness.estimate import warn_if_long
from harness.models import DTYPES, ModelConfig, load_model
from harness.records import JOB, LOCK, RECORDS, TIMING, open_append, parse, quarantine
from harness.sampling import SAMPLER_VERSION
from harness.selectors import Selector, make_selector
from harness.tracking import RUN_ID, TIMINGS, WandbConfig, check_wandb, publish_job

log = logging.getLogger(__name__)

# Greedy draws nothing, so its texts do not depend on the seed: it always runs this one, so
# runs with different seed lists share its records (and the analysis pairs it on this seed).
GREEDY_SEED = 0


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
    """SIGTERM (SLURM's preemption or time limit) or SIGINT (Ctrl-C) arrived; finished batches
    are written."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


def build_selector(selector_cfg: dict[str, Any]) -> Selector:
    params = dict(selector_cfg)
    return make_selector(params.pop("method"), **params)


def config_hash(cfg: DictConfig) -> str:
    """What a record is a function of (``harness.identity``, plus the sampler's version):
    records of another hash are never mixed into a job dir."""
    return identity.config_hash(OmegaConf.to_container(cfg, resolve=True), SAMPLER_VERSION)


def shared_settings(cfg: DictConfig) -> str:
    """Jobs with equal keys can run as one batched generation: same model, prompts, lengths."""
    return identity.shared_settings(OmegaConf.to_container(cfg, resolve=True))


# What to write for a required key that is missing (the config groups that leave it ???).
REQUIRED_EXAMPLES = {
    "model.source": "model=hub model.source=gpt2-large (a hub name) or model.source=/path/to/model",
    "dataset.data_files": "dataset=local dataset.data_files=my.jsonl (dataset.path=text|parquet "
                          "for other formats)",
}


def validate(cfg: DictConfig, here: bool = True) -> Selector:
    """Every check that needs no model and no dataset, so bad input fails in seconds, before
    anything loads or any dir is touched. ``here=False``: the job runs elsewhere (a SLURM
    node), so whether this machine sees its GPU is not checked."""
    for key, example in REQUIRED_EXAMPLES.items():  # before model.name: ${model.source}
        group, leaf = key.split(".")
        if OmegaConf.is_missing(cfg[group], leaf):
            raise JobError(f"{key} is required and was not given; e.g. {example}.")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise JobError(f"{missing[0]} is required and was not given; set {missing[0]}=...")
    try:
        check_wandb(OmegaConf.to_object(cfg.wandb))
        check_dataset(OmegaConf.to_object(cfg.dataset))
    except ValueError as error:
        raise JobError(str(error)) from None
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
    if cfg.model.dtype not in DTYPES:
        raise JobError(f"model.dtype={cfg.model.dtype!r} is not known; use {', '.join(DTYPES)}.")
    try:
        device = torch.device("cpu" if cfg.model.device == "auto" else cfg.model.device)
    except RuntimeError:
        raise JobError(f"model.device={cfg.model.device!r} is not a device; use auto, cpu, cuda "
                       "or cuda:N.") from None
    if here and device.type == "cuda" and not torch.cuda.is_available():
        raise JobError(f"model.device={cfg.model.device!r} but no CUDA device is visible here; "
                       "use model.device=auto or cpu.")
    source = str(cfg.model.source)
    if source.startswith(("/", ".", "~")) and not Path(source).expanduser().is_dir():
        raise JobError(f"model.source={source!r} could not be loaded: no such folder; give a "
                       "local model folder or a hub name.")
    try:
        return build_selector(cfg.selector)
    except ValueError as error:
        raise JobError(f"selector: {error}") from error


def check_job_dir(cfg: DictConfig, job_dir: Path, dir_key: str) -> None:
    """The checks of ``job_dir`` that write nothing, run before Hydra writes its ``.hydra/``
    and log there (``harness.preflight``): it must not hold another config's records nor be
    locked by another writer, and it (or the nearest dir above it that exists) must be
    writable. ``dir_key``: the key that set the dir, for the message."""
    records = job_dir / RECORDS
    if records.is_file():
        refuse_other_config(records, parse(records).records, config_hash(cfg))
    lock = job_dir / LOCK
    if lock.is_file():
        with lock.open() as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JobError(held_message(job_dir, handle.read().strip())) from None
            except OSError:
                pass  # no flock on this file system: job_lock says so when the job runs
            else:
                fcntl.flock(handle, fcntl.LOCK_UN)
    check_writable(job_dir, dir_key)


def check_writable(job_dir: Path, dir_key: str) -> None:
    """Create and remove a dir where Hydra will create the job dir: the one test that root's
    permissions, read-only mounts and /proc all answer truthfully."""
    existing = next(p for p in (job_dir, *job_dir.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as error:
        where = "" if existing == job_dir else f" ({existing} is where it would be created)"
        raise JobError(f"{dir_key}: the job dir {job_dir} cannot be written{where}: "
                       f"{error.strerror or error}; set {dir_key}=... to a writable dir.") from None


def held_message(job_dir: Path, holder: str) -> str:
    return (f"job dir {job_dir} is being written by {holder or 'another process'}. Two writers "
            "would write every record twice: wait for that run to end (re-running then resumes) "
            f"or stop it. If no such process exists (a dead node of a shared file system), "
            f"delete {job_dir / LOCK}.")


def refuse_other_config(path: Path, records: list[dict], expected_hash: str) -> None:
    for record in records:
        if record["config_hash"] != expected_hash:
            raise JobError(
                f"job dir {path.parent} holds records of a different config (hash "
                f"{record['config_hash']}, this job is {expected_hash}; records of an older "
                "sampler count as different). Its records are kept as they are: run this config "
                "in another dir (hydra.run.dir=... or hydra.sweep.dir=...), or delete that dir to "
                "start it over."
            )


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
            raise JobError(held_message(job_dir, handle.read().strip())) from None
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


def read_records(path: Path, expected_hash: str, repair: bool = True
                 ) -> dict[tuple[int, int], dict]:
    """Finished records by (prompt_id, seed). Records of another config are refused, never
    touched; corrupt or duplicated lines are quarantined; a torn last line is cut off.
    ``repair=False`` (another job dir's file, not locked here: a shard's parent): the file is
    only read, its corrupt lines and torn last line skipped."""
    parsed = parse(path)
    refuse_other_config(path, parsed.records, expected_hash)
    if repair and parsed.rejected:
        quarantine(path, parsed)
    elif repair and parsed.torn:
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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # preemption and Ctrl-C: both finish writing


@contextmanager
def sigterm_stops(stop: StopOnSignal) -> Iterator[None]:
    """SIGTERM or SIGINT sets ``stop.signum`` (from the main thread only, where Python
    delivers signals)."""
    def handler(signum: int, frame: Any) -> None:
        stop.signum = signum

    try:
        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread: leave signals to it
        yield
        return
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def append(job: Job, out: Any, records: list[dict], generated: bool = True) -> None:
    """Write ``records`` to ``job``'s file (with its config hash); ``generated``: count them
    as this run's (``job.written``, ``job.new_tokens``)."""
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
    if generated:
        job.written += records
        job.new_tokens += sum(r["num_tokens"] for r in records)


def adopt(job: Job, out: Any, prompts: list[Prompt], records: dict[tuple[int, int], dict],
          source: Path) -> None:
    """Copy into ``job``'s file the ``records`` (of ``source``, the same configuration) of its
    (prompt, seed) pairs that it lacks: a shard of a grown job takes the merged pilot's records
    instead of generating them again."""
    wanted = {(p.prompt_id, seed) for p in prompts for seed in job.seeds} - job.done.keys()
    found = {key: record for key, record in records.items() if key in wanted}
    if found:
        append(job, out, list(found.values()), generated=False)
        job.done.update(found)
        log.info("%s: %d records copied from %s", job.dir, len(found), source)


def write_job_yaml(job: Job, prompts: int) -> None:
    """``job.yaml``: the resolved config, its hash, and the prompts and seeds it runs."""
    (job.dir / JOB).write_text(OmegaConf.to_yaml({
        **OmegaConf.to_container(job.cfg, resolve=True), "config_hash": job.digest,
        "sampler": SAMPLER_VERSION, "prompts": prompts, "seeds_run": job.seeds}))


def generate_jobs(specs: list[tuple[DictConfig, Path, str]],
                  copy_from: Mapping[Path, list[tuple[Path, str]]] | None = None,
                  labels: Mapping[str, Any] | None = None) -> list[Job]:
    """Generate (or finish generating) the records of every job of ``specs`` (config, dir,
    name) as one batched generation; the jobs must share ``shared_settings``. Every dir is
    locked for the whole generation; SIGTERM ends it after the batch in flight is dropped,
    raising ``Terminated`` with every finished batch written. ``copy_from``: by job dir, records
    files and their config hashes whose records of the job's pairs are copied, not generated
    (``adopt``). The invocation's timing (``labels`` added: a cluster task's id) is kept as
    ``record_timing`` says, also when it is stopped."""
    jobs = []
    for cfg, job_dir, name in specs:
        selector = validate(cfg)
        seeds = list(cfg.generation.seeds)
        jobs.append(Job(cfg, job_dir, name, selector, config_hash(cfg),
                        [GREEDY_SEED] if selector.name == "greedy" else seeds))
    if len({shared_settings(job.cfg) for job in jobs}) > 1:
        raise ValueError("generate_jobs: these jobs differ in model, dataset or generation "
                         "settings; group them with shared_settings first.")
    first = jobs[0].cfg
    gen: GenerateConfig = OmegaConf.to_object(first.generation)
    with ExitStack() as stack:
        for job in jobs:
            stack.enter_context(job_lock(job.dir))
        copies = {}
        for job in jobs:
            job.done = read_records(job.dir / RECORDS, job.digest)
            for source, digest in (copy_from or {}).get(job.dir, []):
                copies.setdefault(id(job), []).append(
                    (source, read_records(source, digest, repair=False)))
        loaded = load_model(OmegaConf.to_object(first.model))
        needed = gen.prompt_tokens + gen.max_new_tokens
        if needed > loaded.max_length:
            raise JobError(
                f"generation.prompt_tokens + generation.max_new_tokens = {needed} exceeds the "
                f"context of model {first.model.name!r} ({loaded.max_length} tokens); lower them."
            )
        prompts = load_prompts(OmegaConf.to_object(first.dataset), loaded.tokenizer,
                               gen.prompt_tokens, gen.max_new_tokens)
        files = {id(job): stack.enter_context(open_append(job.dir / RECORDS)) for job in jobs}
        for job in jobs:
            write_job_yaml(job, len(prompts))
            for source, records in copies.get(id(job), []):
                adopt(job, files[id(job)], prompts, records, source)
        rows = [Row(job, prompt, seed) for job in jobs for seed in job.seeds for prompt in prompts
                if (prompt.prompt_id, seed) not in job.done]
        total = sum(len(job.seeds) for job in jobs) * len(prompts)
        warn_if_long(len(rows), gen.max_new_tokens, [job.dir for job in jobs],
                     str(first.model.name), loaded.device)
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
        used, stopped = None, "interrupted"  # an exception (submitit's requeue exits) stops it
        try:
            used = decode.generate(loaded, jobs_rows, gen, batch_size, stop, write)
            stopped = None if stop.signum is None else signal.Signals(stop.signum).name
        finally:
            device = (torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda"
                      else f"cpu, {torch.get_num_threads()} threads")
            record_timing(jobs, time.perf_counter() - started, used or batch_size, device,
                          {**(labels or {}), **({"stopped": stopped} if stopped else {})})
        if stop.signum is not None:
            raise Terminated(stop.signum)
    return jobs


def record_timing(jobs: list[Job], seconds: float, batch_size: int, device: str,
                  labels: Mapping[str, Any]) -> None:
    """This invocation's timing of each job (``job.timing``). A job that wrote records
    appends it to its ``timing_history.jsonl`` (the W&B run's history; a cluster shard's
    merge sums it), also when stopped (``labels["stopped"]``: the batches written before a
    signal or a requeue count); a complete invocation also writes it as ``timing.json`` (the
    plan's rate). A job that wrote nothing keeps both files as they were."""
    tokens = sum(job.new_tokens for job in jobs)
    for job in jobs:
        job.timing = {"generate_seconds": seconds, "new_tokens": job.new_tokens,
                      "records": len(job.written), "fused_jobs": len(jobs),
                      "fused_new_tokens": tokens, "rows_per_forward": batch_size,
                      "tokens_per_s": tokens / seconds if tokens and seconds else 0.0,
                      "device": device, **labels}
        if job.written:
            with (job.dir / TIMINGS).open("a") as history:
                history.write(json.dumps(job.timing) + "\n")
            if "stopped" not in labels:
                (job.dir / TIMING).write_text(json.dumps(job.timing) + "\n")


# Jobs that the fused launcher generated in this process, by dir: run_job only tracks them.
PREGENERATED: dict[Path, Job] = {}


def pregenerate(jobs: list[tuple[Path, DictConfig, dict[str, str]]]) -> None:
    """The fused launcher's first pass: generate the records of ``jobs`` (dir, config, the
    job's ``hydra.job.env_set``), one batched generation per group of shared settings, under
    the group's env. A job with a bad value is left to its own run, which reports it; so are
    jobs that share a dir, and the jobs of a group whose env values differ (each then runs under
    its own env); a group that stops (a held lock, ...) is logged and its jobs then run one by
    one, resuming whatever it wrote."""
    dirs = Counter(job_dir.resolve() for job_dir, _, _ in jobs)
    groups: dict[str, list[tuple[DictConfig, Path, str, dict[str, str]]]] = {}
    for job_dir, cfg, env in jobs:
        try:
            validate(cfg)
        except JobError:
            continue
        if dirs[job_dir.resolve()] > 1:
            log.warning("%d jobs share the dir %s: they run one by one.", dirs[job_dir.resolve()],
                        job_dir)
            continue
        groups.setdefault(shared_settings(cfg), []).append((cfg, job_dir, job_dir.name, env))
    for members in groups.values():
        envs = {json.dumps(env, sort_keys=True) for *_, env in members}
        if len(envs) > 1:
            log.warning("%d jobs that could run fused set different hydra.job.env_set values "
                        "(%s): they run one by one, each under its own.", len(members),
                        " vs ".join(sorted(envs)))
            continue
        try:
            with environment(members[0][3]):
                for job in generate_jobs([spec[:3] for spec in members]):
                    PREGENERATED[job.dir.resolve()] = job
        except (ValueError, FloatingPointError, FileNotFoundError, RuntimeError) as error:
            log.warning("fused generation of %d jobs stopped: %s They run one by one now.",
                        len(members), error)


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``env`` set, as Hydra's ``run_job`` sets ``hydra.job.env_set``."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update({key: str(value) for key, value in env.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def track(job: Job, wandb_dir: Path | None = None) -> None:
    """The configuration's W&B run (``harness.tracking.publish_job``): config, timing of every
    invocation (``timing_history.jsonl``, appended by ``record_timing`` or by the merge of
    a job's shards), a table of sample generations. An invocation that wrote nothing new
    leaves an existing run as it is. Never fails the job (see ``harness.tracking``)."""
    if not job.written and (job.dir / RUN_ID).exists():
        return
    publish_job(OmegaConf.to_object(job.cfg.wandb), job.dir, wandb_dir,
                invocation=job.timing if job.written else None)


def run_job(cfg: DictConfig, job_dir: Path, wandb_dir: Path | None = None,
            name: str | None = None) -> Path:
    """Generate (or finish generating) ``job_dir/generations.jsonl`` for ``cfg``, then track it."""
    job = PREGENERATED.pop(job_dir.resolve(), None)
    if job is None:
        job = generate_jobs([(cfg, job_dir, name or job_dir.name)])[0]
    track(job, wandb_dir)
    return job_dir / RECORDS
