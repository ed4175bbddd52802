"""The on-disk record format, shared by the runner (which writes it) and the analysis (which
only reads it). Torch-free.

A job dir holds ``generations.jsonl``: one JSON object per line, one line per (prompt, seed),
appended and flushed batch by batch. A line that does not parse, lacks a required field or
holds a non-ASCII byte (the writer escapes every other character) is corrupt: the runner moves
it to ``generations.quarantine.jsonl`` (with its line number) and generates its pair again;
the analysis skips it with a warning. A torn last line (a kill mid-write) is cut off.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RECORDS = "generations.jsonl"
QUARANTINE = "generations.quarantine.jsonl"
JOB = "job.yaml"
TIMING = "timing.json"
LOCK = ".lock"
SHARDS = "shards"  # <job dir>/shards/<i>-of-<n>/: a cluster task's job dir (harness.shards)
SHARD_NAME = re.compile(r"(\d+)-of-(\d+)")
REQUIRED = {"prompt_id": int, "seed": int, "prompt": str, "continuation": str, "reference": str,
            "num_tokens": int, "finish_reason": str, "config_hash": str}


@dataclass
class Parsed:
    """The good records of a file (first of each (prompt_id, seed)), and the rejected lines as
    (1-based line number, line text, why)."""

    records: list[dict] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    torn: bytes = b""


def parse_line(line: str) -> tuple[dict | None, str]:
    """(record, '') for a good line; (None, why) for a corrupt one."""
    try:
        record = json.loads(line)
    except ValueError as error:
        return None, f"not JSON ({error})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    for key, kind in REQUIRED.items():
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            return None, f"field {key!r} missing or not {kind.__name__}"
    return record, ""


def parse(path: Path) -> Parsed:
    """Read ``path`` (absent: nothing), separating good records from corrupt and duplicate
    lines; a last line without its newline is returned as ``torn``."""
    out = Parsed()
    if not path.exists():
        return out
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    out.torn = raw[end:]
    seen: dict[tuple[int, int], int] = {}
    for number, raw_line in enumerate(raw[:end].split(b"\n")[:-1], 1):
        line = raw_line.decode(errors="replace")
        if not line.strip():
            continue
        # The writer emits ASCII only (json.dumps escapes the rest), so any other byte is a
        # corrupted one, even where it still decodes (to U+FFFD inside a string).
        record, why = parse_line(line) if raw_line.isascii() else (None, "non-ASCII byte")
        if record is not None:
            key = record["prompt_id"], record["seed"]
            if key in seen:
                record, why = None, f"duplicate of line {seen[key]} (prompt_id, seed) = {key}"
            else:
                seen[key] = number
        if record is None:
            out.rejected.append((number, line, why))
        else:
            out.records.append(record)
    return out


def quarantine(path: Path, parsed: Parsed) -> None:
    """Move the rejected lines of ``path`` into the quarantine file next to it, then rewrite
    ``path`` with the good records only (atomically: a kill leaves the old or the new file)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with (path.parent / QUARANTINE).open("a") as out:
        for number, line, why in parsed.rejected:
            log.warning("%s line %d: %s; moved to %s, its (prompt, seed) is generated again",
                        path, number, why, QUARANTINE)
            out.write(json.dumps({"file": path.name, "line": number, "why": why, "text": line,
                                  "quarantined": stamp}) + "\n")
        out.flush()
        os.fsync(out.fileno())
    rewrite(path, parsed.records)


def rewrite(path: Path, records: list[dict]) -> None:
    partial = path.with_suffix(".rewrite")
    with partial.open("w") as out:
        out.write("".join(json.dumps(r) + "\n" for r in records))
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def open_append(path: Path):
    """The records file, opened for appending (a seam for tests that simulate a full disk)."""
    return path.open("a")
