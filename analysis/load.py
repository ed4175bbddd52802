"""Find the jobs the runner wrote under sweep dirs, merging the shards of one configuration."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

RECORDS, JOB = "generations.jsonl", "job.yaml"  # the runner's on-disk format


@dataclass
class Job:
    """One selector configuration: its config (from job.yaml) and all its shards' records."""

    config: dict
    dirs: list[Path] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return ", ".join(str(d) for d in self.dirs)


def identity(config: dict) -> str:
    """What makes two job dirs shards of the same configuration."""
    dataset = {k: v for k, v in config["dataset"].items() if k not in ("shard", "num_shards")}
    keep = {k: config[k] for k in ("model", "selector", "generation") if k in config}
    keep["generation"] = {k: v for k, v in keep.get("generation", {}).items() if k != "seeds"}
    return json.dumps({**keep, "dataset": dataset}, sort_keys=True)


def find_jobs(sweep_dirs: list[Path]) -> list[Job]:
    """Every job under ``sweep_dirs``; a job without records is reported and skipped."""
    jobs: dict[str, Job] = {}
    for sweep in sweep_dirs:
        if not sweep.is_dir():
            raise FileNotFoundError(f"sweep dir {sweep} does not exist; pass the dir that "
                                    "python -m harness -m wrote (e.g. multirun/seed_comparison).")
        for config_path in sorted(sweep.rglob(JOB)):
            job_dir = config_path.parent
            records_path = job_dir / RECORDS
            lines = records_path.read_text().splitlines() if records_path.exists() else []
            if not lines:
                log.warning("job %s has no generations yet: skipped (re-run its command)", job_dir)
                continue
            config = yaml.safe_load(config_path.read_text())
            job = jobs.setdefault(identity(config), Job(config))
            job.dirs.append(job_dir)
            job.records += [json.loads(line) for line in lines if line.strip().endswith("}")]
    if not jobs:
        raise FileNotFoundError(f"no job with generations under {', '.join(map(str, sweep_dirs))}"
                                "; run a sweep first (python -m harness.sweep seed_comparison).")
    return list(jobs.values())
