"""One job: generate continuations of a dataset's prompts with one selector, resumably.

A job dir holds ``job.yaml`` (the resolved config and its hash) and ``generations.jsonl``, one
record per (prompt, seed), appended and flushed batch by batch. Re-running the same job skips
the finished pairs, so a killed job loses at most the batch in flight.

Seeding: batch b of seed s runs under ``torch.manual_seed(SeedSequence([s, b]))``. Every method
samples (``do_sample=True``; greedy keeps one token), so jobs that differ only in the selector
draw the same random numbers: their texts are paired comparisons and coincide where the kept
sets agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import GenerationConfig

from harness.data import DatasetConfig, Prompt, load_prompts
from harness.models import LoadedModel, ModelConfig, load_model
from harness.selectors import Selector, StepDiagnostics, make_selector
from harness.tracking import WandbConfig, wandb_run

log = logging.getLogger(__name__)

RECORDS = "generations.jsonl"
JOB = "job.yaml"
TIMING = "timing.json"
# Keys that do not change what a (prompt, seed) record holds, so changing them keeps resuming.
UNHASHED = ("sweep", "wandb", "generation.seeds", "generation.samples_to_log", "model.device")


@dataclass
class GenerateConfig:
    """``conf/generation/*.yaml``."""

    prompt_tokens: int = 32
    max_new_tokens: int = 64
    batch_size: int = 8
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    diagnostics: bool = True
    samples_to_log: int = 16  # rows of the W&B sample table


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


def build_selector(selector_cfg: dict[str, Any]) -> Selector:
    params = dict(selector_cfg)
    return make_selector(params.pop("method"), **params)


def config_hash(cfg: DictConfig) -> str:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for dotted in UNHASHED:
        *parents, leaf = dotted.split(".")
        node = resolved
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return hashlib.sha1(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:12]


def validate(cfg: DictConfig) -> Selector:
    """Every check that needs no model, so bad input fails in seconds."""
    gen = cfg.generation
    for key in ("prompt_tokens", "max_new_tokens", "batch_size"):
        if gen[key] < 1:
            raise JobError(f"generation.{key}={gen[key]} must be >= 1.")
    seeds = list(gen.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise JobError(f"generation.seeds={seeds} must be a non-empty list of distinct integers.")
    try:
        return build_selector(cfg.selector)
    except ValueError as error:
        raise JobError(f"selector: {error}") from error


def read_records(path: Path, expected_hash: str) -> dict[tuple[int, int], dict]:
    """Finished records by (prompt_id, seed). A torn last line (a kill mid-write) is cut off;
    records of another config are refused, never overwritten."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):
        log.warning("%s: dropping a torn last line left by an interrupted run", path)
        path.write_bytes(complete)
    records = {}
    for line in complete.decode().splitlines():
        record = json.loads(line)
        if record["config_hash"] != expected_hash:
            raise JobError(
                f"job dir {path.parent} holds records of a different config (hash "
                f"{record['config_hash']}, this job is {expected_hash}). Its records are kept as "
                "they are: run this config in another dir (hydra.run.dir=... or "
                "hydra.sweep.dir=...), or delete that dir to start it over."
            )
        records[record["prompt_id"], record["seed"]] = record
    return records


def summarize_steps(steps: list[StepDiagnostics], lengths: torch.Tensor) -> list[dict]:
    """Per-row means over the steps each row actually generated (its EOS step included)."""
    if not steps:
        return [{} for _ in lengths]
    valid = torch.arange(len(steps))[:, None] < lengths[None, :].cpu()
    count = valid.sum(0).clamp_min(1)
    out = {}
    for name in ("kept", "mass", "mean_rank", "topk_identical"):
        values = torch.stack([getattr(s, name).float().cpu() for s in steps])
        out[name] = ((values * valid).sum(0) / count).tolist()
    return [{"kept_mean": k, "mass_mean": m, "rank_mean": r, "topk_identical_rate": t}
            for k, m, r, t in zip(out["kept"], out["mass"], out["mean_rank"],
                                  out["topk_identical"], strict=True)]


def generation_config(loaded: LoadedModel, max_new_tokens: int) -> GenerationConfig:
    """Sampling with every transformers default switched off: the selector alone decides."""
    return GenerationConfig(
        do_sample=True, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
        temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, min_p=None, epsilon_cutoff=0.0,
        eta_cutoff=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0, renormalize_logits=False,
        eos_token_id=loaded.eos_token_ids, pad_token_id=loaded.tokenizer.pad_token_id,
        use_cache=True,
    )


def batch_seed(seed: int, batch_index: int) -> int:
    """The torch seed of one batch: the same for every selector, so their draws are paired."""
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1)[0])


def continuation_lengths(new: torch.Tensor, eos_token_ids: list[int]) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """Tokens before each row's first EOS (all of them without one), and whether it had one."""
    is_eos = torch.isin(new, torch.tensor(eos_token_ids, device=new.device))
    has_eos = is_eos.any(-1)
    return torch.where(has_eos, is_eos.int().argmax(-1), new.shape[1]), has_eos


def generate_batch(loaded: LoadedModel, selector: Selector, prompts: list[Prompt],
                   gen: GenerateConfig, seed: int, batch_index: int) -> list[dict]:
    tokenizer, device = loaded.tokenizer, loaded.device
    padded = tokenizer.pad({"input_ids": [list(p.input_ids) for p in prompts]},
                           return_tensors="pt")
    processor = selector.logits_processor(record=gen.diagnostics)
    torch.manual_seed(batch_seed(seed, batch_index))
    with torch.inference_mode():
        output = loaded.model.generate(
            input_ids=padded["input_ids"].to(device),
            attention_mask=padded["attention_mask"].to(device),
            generation_config=generation_config(loaded, gen.max_new_tokens),
            logits_processor=[processor],
        )
    new = output[:, padded["input_ids"].shape[1] :].cpu()
    lengths, has_eos = continuation_lengths(new, loaded.eos_token_ids)
    diagnostics = summarize_steps(processor.steps, lengths + has_eos.int())
    records = []
    for prompt, tokens, n, eos, diag in zip(prompts, new, lengths.tolist(), has_eos.tolist(),
                                            diagnostics, strict=True):
        records.append({
            "prompt_id": prompt.prompt_id, "seed": seed, "prompt": prompt.prompt,
            "continuation": tokenizer.decode(tokens[:n], skip_special_tokens=True),
            "reference": prompt.reference, "num_tokens": n,
            "finish_reason": "eos" if eos else "length", **diag,
        })
    return records


def run_job(cfg: DictConfig, job_dir: Path, wandb_dir: Path | None = None,
            name: str | None = None) -> Path:
    """Generate (or finish generating) ``job_dir/generations.jsonl`` for ``cfg``."""
    selector = validate(cfg)
    gen: GenerateConfig = OmegaConf.to_object(cfg.generation)
    job_dir.mkdir(parents=True, exist_ok=True)
    digest = config_hash(cfg)
    records_path = job_dir / RECORDS
    done = read_records(records_path, digest)

    loaded = load_model(OmegaConf.to_object(cfg.model))
    needed = gen.prompt_tokens + gen.max_new_tokens
    if needed > loaded.max_length:
        raise JobError(
            f"generation.prompt_tokens + generation.max_new_tokens = {needed} exceeds the context "
            f"of model {cfg.model.name!r} ({loaded.max_length} tokens); lower them."
        )
    prompts = load_prompts(OmegaConf.to_object(cfg.dataset), loaded.tokenizer,
                           gen.prompt_tokens, gen.max_new_tokens)
    seeds = gen.seeds[:1] if selector.name == "greedy" else gen.seeds  # greedy draws nothing
    batches = [prompts[i : i + gen.batch_size] for i in range(0, len(prompts), gen.batch_size)]
    todo = [(seed, b) for seed in seeds for b in range(len(batches))
            if any((p.prompt_id, seed) not in done for p in batches[b])]
    job = {**OmegaConf.to_container(cfg, resolve=True), "config_hash": digest,
           "prompts": len(prompts), "seeds_run": list(seeds)}
    (job_dir / JOB).write_text(OmegaConf.to_yaml(job))

    tags = [selector.name, cfg.model.name, cfg.dataset.name]
    config = OmegaConf.to_container(cfg, resolve=True)
    with wandb_run(OmegaConf.to_object(cfg.wandb), wandb_dir or job_dir, config=config,
                   job_type="generate", group=cfg.sweep, name=name or job_dir.name,
                   tags=tags) as run:
        if run is not None:
            (job_dir / "wandb_run_id").write_text(run.id)
        total = len(seeds) * len(prompts)
        bar = tqdm(total=total, initial=total - sum(len(batches[b]) for _, b in todo),
                   desc=name or job_dir.name, unit="prompt", dynamic_ncols=True)
        samples, new_tokens, started = [], 0, time.perf_counter()
        with records_path.open("a") as out, bar:
            for seed, b in todo:
                batch = generate_batch(loaded, selector, batches[b], gen, seed, b)
                fresh = [r for r in batch if (r["prompt_id"], seed) not in done]
                out.write("".join(json.dumps({**r, "config_hash": digest}) + "\n" for r in fresh))
                out.flush()
                new_tokens += sum(r["num_tokens"] for r in batch)
                samples += fresh[: max(0, gen.samples_to_log - len(samples))]
                rate = new_tokens / (time.perf_counter() - started)
                bar.set_postfix(tok_s=f"{rate:.0f}")
                bar.update(len(batches[b]))
                if run is not None:
                    run.log({"tokens_per_s": rate, "prompts_done": bar.n})
        timing = {"generate_seconds": time.perf_counter() - started, "new_tokens": new_tokens,
                  "batches": len(todo)}
        timing["tokens_per_s"] = new_tokens / timing["generate_seconds"] if todo else 0.0
        (job_dir / TIMING).write_text(json.dumps(timing) + "\n")  # this invocation's
        if run is not None:
            run.summary.update(timing)
        if run is not None and samples:
            import wandb

            columns = ["prompt_id", "seed", "prompt", "continuation", "reference"]
            run.log({"samples": wandb.Table(columns=columns,
                                            data=[[s[c] for c in columns] for s in samples])})
    return records_path
