"""Find the jobs the runner wrote under sweep dirs: shards of one configuration merged, each
(configuration, prompt, seed) counted once, and every configuration compared on the prompts
that all configurations with the same references finished."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.records import JOB, RECORDS, parse

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One selector configuration: its config (from job.yaml) and all its shards' records."""

    config: dict
    dirs: list[Path] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    set_aside: int = 0  # records outside the common prompt set

    @property
    def name(self) -> str:
        return ", ".join(str(d) for d in self.dirs)


class DuplicateMismatch(ValueError):
    """Two dirs hold different texts for one (configuration, prompt, seed)."""


def identity(config: dict) -> str:
    """What makes two job dirs hold records of the same configuration: everything a record is a
    function of (batch size, dataset limit and shards are not)."""
    dataset = {k: v for k, v in config["dataset"].items()
               if k not in ("shard", "num_shards", "limit")}
    keep = {k: config[k] for k in ("model", "selector", "generation", "sampler") if k in config}
    keep["generation"] = {k: v for k, v in keep.get("generation", {}).items()
                          if k not in ("seeds", "batch_size", "samples_to_log")}
    keep["model"] = {k: v for k, v in keep.get("model", {}).items() if k != "device"}
    return json.dumps({**keep, "dataset": dataset}, sort_keys=True)


REFERENCE_KEYS = ("model", "dataset", "max_new_tokens")


def reference_keys(config: dict) -> dict:
    """What defines a job's references: the next max_new_tokens tokens (of the model's
    tokenizer) of the dataset's documents. Jobs with equal keys are compared on one prompt
    set, against one human row."""
    return dict(zip(REFERENCE_KEYS, (config["model"]["name"], config["dataset"]["name"],
                                     config["generation"]["max_new_tokens"]), strict=True))


def read_job_dir(job: Job, job_dir: Path, owner: dict[tuple[int, int], tuple[Path, str]],
                 counts: dict[str, int]) -> None:
    """Add ``job_dir``'s records to ``job``; corrupt lines are skipped with a warning, repeats of
    a (prompt, seed) already read are dropped, and a repeat with another text is an error."""
    parsed = parse(job_dir / RECORDS)
    if parsed.records:
        job.dirs.append(job_dir)
    else:  # none yet, or only corrupt lines (which would empty the common prompt set)
        log.warning("job %s has no generations yet: skipped (re-run its command)", job_dir)
    for number, _, why in parsed.rejected:
        if why.startswith("duplicate"):
            counts["duplicates"] += 1
        else:
            log.warning("%s line %d skipped: %s", job_dir / RECORDS, number, why)
            counts["corrupt"] += 1
    for record in parsed.records:
        key = record["prompt_id"], record["seed"]
        if key in owner:
            other, text = owner[key]
            if text != record["continuation"]:
                raise DuplicateMismatch(
                    f"{other} and {job_dir} both hold (prompt_id, seed) = {key} of one "
                    "configuration with different texts; analyse only one of them (or delete "
                    "the stale one).")
            counts["duplicates"] += 1
            continue
        owner[key] = (job_dir, record["continuation"])
        job.records.append(record)


def restrict_to_common_prompts(jobs: list[Job]) -> None:
    """Within each reference group keep only the prompts that every job finished for every seed
    it has, so that every row of the table (and the human row) is over the same prompts."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(reference_keys(job.config).values()), []).append(job)
    for group in groups.values():
        common: set[int] | None = None
        for job in group:
            seeds = {r["seed"] for r in job.records}
            by_seed = [{r["prompt_id"] for r in job.records if r["seed"] == s} for s in seeds]
            mine = set.intersection(*by_seed) if by_seed else set()
            common = mine if common is None else common & mine
        for job in group:
            kept = [r for r in job.records if r["prompt_id"] in common]
            job.set_aside = len(job.records) - len(kept)
            if job.set_aside:
                log.warning("%s: %d records set aside, outside the %d prompts every "
                            "configuration finished (the table compares rows on those only)",
                            job.name, job.set_aside, len(common))
            job.records = kept


def find_jobs(sweep_dirs: list[Path]) -> list[Job]:
    """Every job under ``sweep_dirs``; a job without records is reported and skipped."""
    jobs: dict[str, Job] = {}
    owners: dict[str, dict] = {}
    counts = {"duplicates": 0, "corrupt": 0}
    for sweep in sweep_dirs:
        if not sweep.is_dir():
            raise FileNotFoundError(f"sweep dir {sweep} does not exist; pass the dir that "
                                    "python -m harness -m wrote (e.g. multirun/seed_comparison).")
        for config_path in sorted(sweep.rglob(JOB)):
            job_dir = config_path.parent
            config = yaml.safe_load(config_path.read_text())
            key = identity(config)
            job = jobs.setdefault(key, Job(config))
            read_job_dir(job, job_dir, owners.setdefault(key, {}), counts)
    if counts["duplicates"]:
        log.warning("%d duplicated (configuration, prompt, seed) records dropped: each is "
                    "counted once", counts["duplicates"])
    if counts["corrupt"]:
        log.warning("%d corrupt lines skipped (re-running their jobs quarantines and regenerates "
                    "them)", counts["corrupt"])
    result = [job for job in jobs.values() if job.records]
    if not result:
        raise FileNotFoundError(f"no job with generations under {', '.join(map(str, sweep_dirs))}"
                                "; run a sweep first (python -m harness.sweep seed_comparison).")
    restrict_to_common_prompts(result)
    return result
