"""Example generations side by side, for ``report.html`` and ``samples.tex``: for a prompt, every
configuration's continuation (one seed), configurations with identical texts grouped, and where
each text departs from the baseline's.

Keyed sampling makes this telling: two configurations share a text until the first step where
their kept sets lead to different tokens. Records hold texts, not token ids, so the departure is
marked on the first *word piece* that differs: a run of word characters or one punctuation mark,
with the whitespace before it (about what a BPE token covers).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from analysis.load import Job, reference_keys
from analysis.table import settings

PIECE = re.compile(r"(\s*)(\w+|[^\w\s]|$)")


@dataclass
class SampleGroup:
    configurations: list[dict]  # {"method": ..., parameter: value, ...}
    text: str
    is_baseline: bool = False
    departs: tuple[int, int] | None = None  # [start, end) of the first piece that differs


@dataclass
class SamplePrompt:
    prompt_id: int
    seed: int
    prompt: str
    reference: str
    references: dict  # model, dataset, max_new_tokens
    groups: list[SampleGroup] = field(default_factory=list)


def selector_of(job: Job) -> dict:
    """The job's method and its set parameters, as a row of the summary has them."""
    selector = dict(job.config["selector"])
    return {"method": selector.pop("method"),
            **{k: v for k, v in selector.items() if v is not None}}


def configurations(jobs: list[Job]) -> dict[str, dict]:
    """Per job (config id), what tells it apart as a summary row does: its method and set
    parameters, and the settings in which the jobs differ (``model.dtype``, ...) but the
    reference keys (model, dataset, new tokens), which a sample's heading names."""
    varying = settings(jobs) if jobs else None
    out = {}
    for job in jobs:
        extra = {} if varying is None else varying.loc[job.config_id].to_dict()
        out[job.config_id] = {**selector_of(job), **{
            k: v for k, v in extra.items() if k not in REFERENCE_KEYS and v is not None
            and not (isinstance(v, float) and math.isnan(v))}}
    return out


REFERENCE_KEYS = ("model", "dataset", "max_new_tokens")


def same_selector(a: dict, b: dict | None) -> bool:
    """Equal methods, parameters and settings (numbers compared with a tolerance: 10 ==
    10.0); reference keys in ``b`` are left out (a sample group shares them)."""
    if b is None:
        return False
    b = {k: v for k, v in b.items() if k not in REFERENCE_KEYS}
    if a.keys() != b.keys():
        return False
    return all(a[k] == b[k] or (isinstance(a[k], int | float) and isinstance(b[k], int | float)
                                and math.isclose(a[k], b[k])) for k in a)


def departure(text: str, base: str) -> tuple[int, int] | None:
    """[start, end) of the first word piece of ``text`` that differs from ``base``: it contains
    the first differing character (or, where ``text`` stops early, is empty at its end); None
    for identical texts. ``text[:start]`` is the prefix both share."""
    if text == base:
        return None
    pairs = enumerate(zip(text, base, strict=False))
    first = next((i for i, (a, b) in pairs if a != b), min(len(text), len(base)))
    if first == len(text):  # stops where the baseline goes on
        return first, first
    piece = next(p for p in PIECE.finditer(text) if p.end() > first)
    # the whitespace before a piece goes with the shared prefix unless it differs
    start = piece.start(2) if first >= piece.start(2) else piece.start()
    return start, piece.end()


def sample_prompts(jobs: list[Job], count: int, baseline: dict | None = None,
                   ) -> list[SamplePrompt]:
    """The first ``count`` prompts of each reference group, at the smallest seed every job of
    the group ran, with the jobs' texts grouped and marked against ``baseline`` (a row's
    method, parameters and settings, as ``analysis.latex.baseline_selector`` gives; None: no
    marks)."""
    named = configurations(jobs)
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(reference_keys(job.config).values()), []).append(job)
    result = []
    for group in groups.values():
        group = sorted(group, key=lambda j: str(sorted(named[j.config_id].items())))
        seeds = set.intersection(*({r["seed"] for r in job.records} for job in group))
        if not seeds:
            continue
        seed = min(seeds)
        texts = [{r["prompt_id"]: r for r in job.records if r["seed"] == seed}
                 for job in group]
        prompt_ids = sorted(set.intersection(*(set(t) for t in texts)))[:count]
        base = next((i for i, job in enumerate(group)
                     if same_selector(named[job.config_id], baseline)), None)
        for prompt_id in prompt_ids:
            first = texts[0][prompt_id]
            sample = SamplePrompt(prompt_id, seed, first["prompt"], first["reference"],
                                  reference_keys(group[0].config))
            by_text: dict[str, SampleGroup] = {}
            for i, job in enumerate(group):
                text = texts[i][prompt_id]["continuation"]
                entry = by_text.setdefault(text, SampleGroup([], text))
                entry.configurations.append(named[job.config_id])
                entry.is_baseline |= i == base
            if base is not None:
                base_text = texts[base][prompt_id]["continuation"]
                for entry in by_text.values():
                    entry.departs = departure(entry.text, base_text)
            sample.groups = sorted(by_text.values(), key=lambda g: not g.is_baseline)
            result.append(sample)
    return result
