"""What identifies a configuration: the one definition, torch-free, from which the runner's
config hash and job grouping, the analysis's rows and reference groups, and Hydra's job dir
names (``exclude_keys`` in conf/config.yaml, checked by tests/test_identity.py) all derive.

A configuration is what its records are a function of: the resolved job config (model,
dataset, selector, generation) and the sampler version, without ``UNHASHED``. Shards of one
configuration hold other prompts of the same configuration, so they are one configuration
(and one row of the table), though each shard has its own dir and hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping

# Keys a record is not a function of: changing them keeps resuming the same job dir.
UNHASHED = ("sweep", "wandb", "generation.seeds", "generation.samples_to_log",
            "generation.batch_size", "generation.compile", "model.device", "dataset.limit")
# Which prompts a dir holds, not what a record holds.
SHARDING = ("dataset.shard", "dataset.num_shards")
# Keys records do not depend on but one batched generation must share (one compiled model on
# one device, one prompt list).
RUN_WIDE = ("generation.compile", "model.device", "dataset.limit")
# The sections of a job config (job.yaml adds bookkeeping such as config_hash and prompts).
SECTIONS = ("model", "dataset", "selector", "generation", "sampler")


def without(config: Mapping, dotted_keys: Iterable[str]) -> dict:
    """A deep copy of ``config`` without ``dotted_keys`` (``"generation.seeds"``)."""
    out = copy.deepcopy(dict(config))
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def config_hash(config: Mapping, sampler_version: str) -> str:
    """The hash every record of a job dir carries: records of another hash are never mixed
    into that dir. ``config`` is the resolved job config as a plain dict."""
    content = {**without(config, UNHASHED), "sampler": sampler_version}
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def configuration(config: Mapping) -> str:
    """What makes two job dirs hold records of one configuration (one row of the table), from a
    job.yaml: its sections without ``UNHASHED`` and ``SHARDING``."""
    sections = {k: config[k] for k in SECTIONS if k in config}
    return json.dumps(without(sections, (*UNHASHED, *SHARDING)), sort_keys=True)


def references(config: Mapping) -> str:
    """What a job's human references are a function of: the tokenizer (model.source), the
    documents (the dataset but its shard and limit) and where the prompt ends and the
    reference stops (generation.prompt_tokens, generation.max_new_tokens)."""
    dataset = without(config["dataset"], ("limit", *(k.split(".")[1] for k in SHARDING)))
    generation = config["generation"]
    return json.dumps({"source": config["model"]["source"], "dataset": dataset,
                       "prompt_tokens": generation["prompt_tokens"],
                       "max_new_tokens": generation["max_new_tokens"]}, sort_keys=True)


def shared_settings(config: Mapping) -> str:
    """Jobs with equal keys can run as one batched generation: everything but the selector and
    the per-job keys of ``UNHASHED``."""
    per_job = [k for k in UNHASHED if k not in RUN_WIDE]
    return json.dumps(without(config, ("selector", *per_job)), sort_keys=True)


def short(key: str) -> str:
    """A 10-character name for a configuration or reference key (columns of the CSVs)."""
    return hashlib.sha1(key.encode()).hexdigest()[:10]
