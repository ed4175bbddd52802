"""Find the jobs the runner wrote under sweep dirs: shards of one configuration merged, each
(configuration, prompt, seed) counted once, and every configuration compared on the prompts
that all configurations with the same references finished."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness import identity
from harness.records import JOB, RECORDS, parse

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One configuration (``harness.identity``): its config (from job.yaml) and all its
    shards' records."""

    config: dict
    dirs: list[Path] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    set_aside: int = 0  # records outside the common prompt set
    trimmed: int = 0  # texts that ended inside a character (see trim_partial_characters)

    @property
    def name(self) -> str:
        return ", ".join(str(d) for d in self.dirs)

    @property
    def config_id(self) -> str:
        """Names the configuration in the CSVs: a short hash of what its records depend on."""
        return identity.short(identity.configuration(self.config))

    @property
    def references_id(self) -> str:
        """Names its reference group: jobs with one references_id share prompts and humans."""
        return identity.short(identity.references(self.config))


class DuplicateMismatch(ValueError):
    """Two dirs hold different texts for one (configuration, prompt, seed)."""


class NoGenerations(FileNotFoundError, ValueError):
    """A sweep dir that does not exist, or holds no job with generations (an input error:
    a ValueError, and a FileNotFoundError as before)."""


def reference_keys(config: dict) -> dict:
    """The readable part of a job's reference group (the group itself is
    ``Job.references_id``): model, dataset and reference length."""
    return {"model": config["model"]["name"], "dataset": config["dataset"]["name"],
            "max_new_tokens": config["generation"]["max_new_tokens"]}


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
    for group in reference_groups(jobs).values():
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


def reference_groups(jobs: list[Job]) -> dict[str, list[Job]]:
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.references_id, []).append(job)
    return groups


PARTIAL = "\ufffd"  # what decoding leaves of a character whose bytes were cut


def trim_partial_characters(job: Job) -> None:
    """A prompt, continuation or reference cut by token count can end (or start) inside a
    multi-byte character, which decodes to U+FFFD; that partial character is dropped before
    scoring, and ``job.trimmed`` counts the texts it was dropped from."""
    for record in job.records:
        for key in ("prompt", "continuation", "reference"):
            text = record[key]
            if text.startswith(PARTIAL) or text.endswith(PARTIAL):
                record[key] = text.strip(PARTIAL)
                job.trimmed += key == "continuation"


def unidentified_dirs(sweep_dirs: list[Path]) -> list[Path]:
    """Dirs that hold records but no job.yaml: no configuration can be named for them."""
    return sorted(p.parent for sweep in sweep_dirs if sweep.is_dir()
                  for p in sweep.rglob(RECORDS) if not (p.parent / JOB).exists())


def skipped_dirs(sweep_dirs: list[Path], jobs: list[Job]) -> list[Path]:
    """Job dirs (with a job.yaml) that gave no record: empty (a job stopped before its first
    record) or only corrupt lines; ``find_jobs`` skipped them."""
    read = {d for job in jobs for d in job.dirs}
    return sorted(p.parent for sweep in sweep_dirs if sweep.is_dir()
                  for p in sweep.rglob(JOB) if p.parent not in read)


def load_notes(sweep_dirs: list[Path], jobs: list[Job]) -> list[str]:
    """What the loading left out or changed, for under the table."""
    notes = []
    skipped = skipped_dirs(sweep_dirs, jobs)
    if skipped:
        notes.append(f"{len(skipped)} job dir(s) with no generations (an empty or missing "
                     f"{RECORDS}, or only corrupt lines) skipped: {', '.join(map(str, skipped))}"
                     ". Their configurations are not in the table unless another dir holds "
                     "them; re-run their commands to add them.")
    unknown = unidentified_dirs(sweep_dirs)
    if unknown:
        notes.append(f"Warning: {len(unknown)} dir(s) with generations but no job.yaml left out "
                     f"(their configuration is unknown): {', '.join(map(str, unknown))}.")
    set_aside = sum(job.set_aside for job in jobs)
    if set_aside:
        notes.append(f"{set_aside} records outside the prompts every configuration finished "
                     "were set aside: every row is over the same prompts.")
    trimmed = sum(job.trimmed for job in jobs)
    if trimmed:
        notes.append(f"{trimmed} continuations were cut inside a multi-byte character by the "
                     "token limit; that partial character (U+FFFD) was dropped before scoring.")
    return notes


def find_jobs(sweep_dirs: list[Path]) -> list[Job]:
    """Every job under ``sweep_dirs``; a job without records is reported and skipped."""
    jobs: dict[str, Job] = {}
    owners: dict[str, dict] = {}
    counts = {"duplicates": 0, "corrupt": 0}
    for sweep in sweep_dirs:
        if not sweep.is_dir():
            raise NoGenerations(f"sweep dir {sweep} does not exist; pass the dir that "
                                    "python -m harness -m wrote (e.g. multirun/seed_comparison).")
        for config_path in sorted(sweep.rglob(JOB)):
            job_dir = config_path.parent
            config = yaml.safe_load(config_path.read_text())
            key = identity.configuration(config)
            job = jobs.setdefault(key, Job(config))
            read_job_dir(job, job_dir, owners.setdefault(key, {}), counts)
    if counts["duplicates"]:
        log.warning("%d duplicated (configuration, prompt, seed) records dropped: each is "
                    "counted once", counts["duplicates"])
    if counts["corrupt"]:
        log.warning("%d corrupt lines skipped (re-running their jobs quarantines and regenerates "
                    "them)", counts["corrupt"])
    for job_dir in unidentified_dirs(sweep_dirs):
        log.warning("%s holds generations but no %s: left out of the table (its configuration "
                    "is unknown; re-run its command to write it)", job_dir, JOB)
    result = [job for job in jobs.values() if job.records]
    if not result:
        raise NoGenerations(f"no job with generations under {', '.join(map(str, sweep_dirs))}"
                                "; run a sweep first (python -m harness.sweep seed_comparison).")
    restrict_to_common_prompts(result)
    for job in result:
        trim_partial_characters(job)
    return result
