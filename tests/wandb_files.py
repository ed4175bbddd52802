"""Read W&B's offline ``.wandb`` files (wandb >= 0.19 writes them from Go and ships no Python
reader): the LevelDB log format (github.com/google/leveldb/blob/main/doc/log_format.md) after
W&B's 7-byte header (":W&B", magic 0xBEE1, a version byte), each record a ``wandb_internal_pb2``
``Record``."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7  # checksum uint32, length uint16, type uint8 (and the file header's length)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic) == (b":W&B", 0xBEE1) and version in (0, 1), path
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's trailer
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
        else:  # zero padding
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
    return out


@dataclass
class OfflineRun:
    folder: Path
    id: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def read_run(folder: Path) -> OfflineRun:
    """What one ``offline-run-*`` folder would upload: the run's settings, config, every
    history step and the final summary."""
    (path,) = folder.glob("*.wandb")
    run = OfflineRun(folder)
    for raw in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.id, run.group = record.run.run_id, record.run.run_group
            run.job_type, run.name = record.run.job_type, record.run.display_name
            update_config(run.config, record.run.config.update)
        elif kind == "config":
            update_config(run.config, record.config.update)
        elif kind == "history":
            run.history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return run


def update_config(config: dict, items) -> None:
    for item in items:
        key = item.key or "/".join(item.nested_key)
        value = json.loads(item.value_json)
        config[key] = value.get("value", value) if isinstance(value, dict) else value


def read_runs(wandb_dir: Path) -> list[OfflineRun]:
    return [read_run(folder) for folder in sorted(wandb_dir.glob("offline-run-*"))]
