"""The decode path: the rows of a fused group of jobs -> their records, batch by batch, at
static shapes.

Shapes never change within a group, so a compiled step compiles once per process:
- every prompt is exactly ``generation.prompt_tokens`` wide (``harness.data``), and every batch
  has exactly ``batch_size`` rows (or the group's row count, if smaller): the last ones are
  padded with dummy rows, whose outputs are dropped;
- one transformers ``StaticCache`` of ``prompt_tokens + max_new_tokens`` positions serves every
  batch (reset, never reallocated);
- the layout is fixed for the whole group: each job owns the same slots (a contiguous slice of
  rows) in every batch, so each selector runs on a constant slice. Slots are shared in
  proportion to the jobs' remaining rows; a job that has run out fills its slots with dummy
  rows. (Per-row parameter tensors, as vLLM's batched sampler, would
  let the layout vary, but a group mixes methods: each row would pay for every method of its
  group -- 7 for ``seed_comparison``, two of them full-vocabulary sorts -- where a fixed slice
  pays for its own.)

With ``generation.compile`` the decode step (the model's forward over the static cache and the
whole logits step: selectors, diagnostics, keyed noise) is one ``torch.compile(fullgraph=True)``
graph: inductor with CUDA graphs on a GPU, aten's kernels on CPU (``COMPILERS``). It compiles
once per *layout* (``layout_key``): each slot's method, its rows, and the parameters that stay
Python objects (a null ``top_k`` or ``mass``, a ``top_k`` above ``TOPK_WIDTH``). Parameter
values (top_k, alpha, top_p, min_p, temperature, ...) enter as graph inputs
(``Selector.with_tensor_values``), so a grid over them replays one graph, across groups and
jobs of a process; a group with more jobs than rows per forward runs in parts, one layout each
(dynamo's recompile limit is raised to the layouts met). The step reads no device value on the host
(``sample_step(graph_safe=True)``): NaN logits raise after the batch, naming the position, and
EOS is checked every ``CHECK_EOS_EVERY`` steps (each row still stops at its own EOS). On CPU
without compilation the same loop runs eagerly with the cheaper data-dependent choices of
``sample_step`` (host reads cost nothing there); the records are the same.

``generation.batch_size=auto``: the largest batch that fits the free memory (``auto_batch_size``,
the previous group's cache counted as free); on out-of-memory the batch in flight is retried at
half the size, after every finished batch was written.

The cache goes to the model's forward under the keyword it takes (``cache_keyword``), and every
prefill is checked to have written it (``Decoder.check_prefill``): a transformers release whose
models ignore the keyword would otherwise decode garbage, silently.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import Tensor
from tqdm.auto import tqdm
from transformers import GenerationConfig, StaticCache

from harness.data import Prompt
from harness.models import LoadedModel
from harness.sampling import Groups, row_keys, sample_step
from harness.selectors import nan_error

log = logging.getLogger(__name__)

CHECK_EOS_EVERY = 16  # steps between host reads of "has every row ended?"
# Float32 [rows, vocab] temporaries the logits step holds at once (logits, prepared, softmax,
# score, sort values and order, keep, noise in int64, perturbed, ...): a generous count.
LOGITS_COPIES = 16
MEMORY_MARGIN = 0.8  # share of the free memory that auto may plan to use
# torch.compile's settings by device: inductor with CUDA graphs on a GPU. On CPU, dynamo and
# AOTAutograd capture and functionalise the same whole-step graph as on a GPU (fullgraph, no
# recompile, checked in CI) and run it on aten's kernels: with torch 2.13.0+cpu, inductor's C++
# for this step fails to build (vectorised: VecMask<int> vs VecMask<float>), aborts with a
# double free (the vectorised keyed noise), or segfaults (scalar, cpp.simdlen=1, on a batch
# mixing top_k and typical rows); bench/RESULTS.md, 2026-12-03. On CPU compiling is for checking
# the path (inductor's scalar code was 1.28x slower than eager), and aten's kernels keep the
# records exactly those of the eager loop.
COMPILERS: dict[str, dict[str, Any]] = {
    "cuda": {"backend": "inductor", "mode": "reduce-overhead"},
    "cpu": {"backend": "aot_eager"},
}


@dataclass(frozen=True)
class Row:
    job: Any  # harness.runner.Job: its .selector decodes this row
    prompt: Prompt
    seed: int


def generation_config(loaded: LoadedModel, max_new_tokens: int,
                      compile: bool = False) -> GenerationConfig:
    """generate's greedy path with every transformers default that could touch the scores off,
    so that ``KeyedSampler`` alone decides: the reference this module is tested against."""
    extra = {"cache_implementation": "static"} if compile else {}
    return GenerationConfig(**extra,
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
        repetition_penalty=1.0, no_repeat_ngram_size=0, renormalize_logits=False,
        eos_token_id=loaded.eos_token_ids, pad_token_id=loaded.tokenizer.pad_token_id,
        use_cache=True,
    )


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword under which ``model.forward`` takes its KV cache: ``cache`` in the
    transformers of requirements.lock, ``past_key_values`` in older 5.x releases (5.17.0, the
    GPU machine's), whose models swallow an unknown ``cache=`` in ``**kwargs`` and attend to
    nothing."""
    parameters = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise RuntimeError(
        f"{type(model).__name__}.forward takes neither cache nor past_key_values (transformers "
        f"{transformers.__version__}): the decode path cannot pass it a static KV cache; use "
        "transformers>=5.17,<6 (pyproject.toml) with a model it supports.")


def continuation_lengths(new: Tensor, eos_token_ids: list[int]) -> tuple[Tensor, Tensor]:
    """Tokens before each row's first EOS (all of them without one), and whether it had one."""
    is_eos = torch.isin(new, torch.tensor(eos_token_ids, device=new.device))
    has_eos = is_eos.any(-1)
    return torch.where(has_eos, is_eos.int().argmax(-1), new.shape[1]), has_eos


def summarize_steps(values: Tensor, lengths: Tensor) -> list[dict]:
    """Per-row means over the steps each row actually generated (its EOS step included).
    ``values``: ``[4, steps, rows]`` (kept, mass, mean rank, top-k identical)."""
    valid = torch.arange(values.shape[1])[:, None] < lengths[None, :].cpu()
    count = valid.sum(0).clamp_min(1)
    kept, mass, rank, identical = (((v.cpu() * valid).sum(0) / count).tolist() for v in values)
    # 6 decimals: the float noise of another batch size's matmuls rarely shows (at most 1e-6)
    return [{"kept_mean": round(k, 6), "mass_mean": round(m, 6), "rank_mean": round(r, 6),
             "topk_identical_rate": round(t, 6)}
            for k, m, r, t in zip(kept, mass, rank, identical, strict=True)]


def plan_slots(counts: Sequence[int], batch_size: int) -> list[int]:
    """Each job's rows per batch (``counts``: its remaining rows), summing to at most
    ``batch_size``: one slot each, then one at a time to the job that needs the most batches."""
    slots = [1] * len(counts)
    for _ in range(batch_size - len(counts)):
        need = [-(-n // s) for n, s in zip(counts, slots, strict=True)]
        if max(need) <= 1:
            break
        slots[need.index(max(need))] += 1
    return slots


def batches(jobs_rows: list[list[Row]], batch_size: int
            ) -> Iterator[tuple[list[Row | None], Groups]]:
    """The group's batches in its fixed layout: ``batch_size`` rows each (None: a dummy row),
    and each job's selector with its slice. More jobs than rows: jobs go ``batch_size`` at a
    time, each such part with its own layout."""
    jobs_rows = [rows for rows in jobs_rows if rows]
    for first in range(0, len(jobs_rows), batch_size):
        part = jobs_rows[first : first + batch_size]
        slots = plan_slots([len(rows) for rows in part], batch_size)
        groups, start = [], 0
        for rows, n in zip(part, slots, strict=True):
            groups.append((rows[0].job.selector, slice(start, start + n)))
            start += n
        for b in range(max(-(-len(rows) // n) for rows, n in zip(part, slots, strict=True))):
            batch: list[Row | None] = []
            for rows, n in zip(part, slots, strict=True):
                mine = rows[b * n : (b + 1) * n]
                batch += mine + [None] * (n - len(mine))
            yield batch + [None] * (batch_size - len(batch)), groups


class Decoder:
    """A static KV cache for ``rows`` rows and (with ``compile``) the compiled decode step: made
    once per process and shape (``decoder()``), reused by every batch of every group."""

    def __init__(self, loaded: LoadedModel, rows: int, prompt_tokens: int, new_tokens: int,
                 compile: bool) -> None:
        self.key = (id(loaded.model), rows, prompt_tokens, new_tokens, compile)
        self.loaded, self.rows = loaded, rows
        self.prompt_tokens, self.new_tokens = prompt_tokens, new_tokens
        self.compiled = compile
        self.graph_safe = compile or loaded.device.type != "cpu"
        self.cache = StaticCache(config=loaded.model.config,
                                 max_cache_len=prompt_tokens + new_tokens)
        self.cache_keyword = cache_keyword(loaded.model)
        self.groups: Groups = []
        self.layouts: dict[tuple, Groups] = {}  # compiled: each layout's selectors, tensor-valued
        self.keys = torch.zeros(rows, dtype=torch.int64, device=loaded.device)
        self.record = True
        self.step = self._step
        if compile:
            torch._dynamo.mark_static_address(self.keys)  # refilled in place, as the cache
            self.step = torch.compile(self._step, fullgraph=True, dynamic=False,
                                      **COMPILERS.get(loaded.device.type, COMPILERS["cuda"]))

    def sample(self, logits: Tensor, step: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The logits step: next tokens ``[rows]``, diagnostics ``[4, rows]``, NaN flag."""
        perturbed, diagnostics, has_nan = sample_step(logits, self.groups, self.keys, step,
                                                      self.record, self.graph_safe)
        stats = (torch.stack([diagnostics.kept.float(), diagnostics.mass,
                              diagnostics.mean_rank, diagnostics.topk_identical.float()])
                 if diagnostics is not None else logits.new_zeros(4, logits.shape[0]))
        return perturbed.argmax(-1), stats, has_nan

    def _step(self, tokens: Tensor, step: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Generated step ``step`` >= 1: feed the tokens of step - 1, sample step's."""
        position = (step + (self.prompt_tokens - 1)).view(1, 1).expand(self.rows, 1)
        logits = self.loaded.model(input_ids=tokens[:, None], position_ids=position,
                                   use_cache=True, **{self.cache_keyword: self.cache}
                                   ).logits[:, -1]
        return self.sample(logits, step)

    def check_prefill(self) -> None:
        """Refuse to decode when the prefill left the static cache without the prompt's
        positions: every later step would attend to nothing and sample garbage, silently."""
        held = int(self.cache.get_seq_length())
        if held != self.prompt_tokens:
            raise RuntimeError(
                f"the static KV cache holds {held} positions after a prefill of "
                f"{self.prompt_tokens} prompt tokens: {type(self.loaded.model).__name__} under "
                f"transformers {transformers.__version__} did not write it (passed as "
                f"{self.cache_keyword}=); stopped before this batch's first token. Use the "
                "transformers of requirements.lock, or a release this harness supports "
                "(pyproject.toml).")

    def cache_bytes(self) -> int:
        """What the static KV cache holds (its layers are allocated at the first prefill)."""
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   if getattr(layer, "is_initialized", False) for t in (layer.keys, layer.values))

    def layout(self, groups: Groups) -> Groups:
        """``groups`` as the compiled step takes them: one selector copy per layout and slot
        whose parameters are tensors (``Selector.with_tensor_values``), refilled with these
        jobs' values, so that dynamo guards on the layout alone (see ``layout_key``) and every
        grid point of it replays one graph."""
        key = layout_key(groups)
        if key not in self.layouts:
            self.layouts[key] = [(selector.with_tensor_values(self.keys.device), rows)
                                 for selector, rows in groups]
            for selector, _ in self.layouts[key]:
                for value in vars(selector).values():
                    if isinstance(value, Tensor):
                        torch._dynamo.mark_static_address(value)  # refilled in place
            allow_compilations()
        for (mine, _), (theirs, _) in zip(self.layouts[key], groups, strict=True):
            mine.load_values(theirs)
        return self.layouts[key]

    def run(self, input_ids: Tensor, keys: Tensor, groups: Groups, record: bool,
            alive: Tensor, stop: Any, progress: Callable[[int], Any] | None = None,
            ) -> tuple[Tensor, Tensor, Tensor] | None:
        """One batch: generated tokens ``[rows, steps]``, diagnostics ``[4, steps, rows]`` and the
        NaN flags ``[steps]``; None when ``stop.signum`` was set. ``alive``: the real rows;
        ``progress(1)`` after each step."""
        self.groups, self.record = (self.layout(groups) if self.compiled else groups), record
        self.keys.copy_(keys)
        device, steps = input_ids.device, self.new_tokens
        tokens = torch.empty(self.rows, steps, dtype=torch.long, device=device)
        stats = torch.zeros(4, steps, self.rows, device=device)
        nan = torch.zeros(steps, dtype=torch.bool, device=device)
        eos = torch.tensor(self.loaded.eos_token_ids, device=device)
        step_ids = torch.arange(steps, device=device)
        self.cache.reset()
        logits = self.loaded.model(input_ids=input_ids, use_cache=True, logits_to_keep=1,
                                   **{self.cache_keyword: self.cache}).logits[:, -1]
        self.check_prefill()
        out = self.sample(logits, step_ids[0])
        for t in range(steps):
            if t:
                out = self.step(tokens[:, t - 1], step_ids[t])
            tokens[:, t], stats[:, t], nan[t] = out  # copied out before the next replay
            if progress is not None:
                progress(1)
            if stop.signum is not None:
                return None
            if (t + 1) % CHECK_EOS_EVERY == 0 and t + 1 < steps:
                ended = torch.isin(tokens[:, : t + 1], eos).any(-1) | ~alive
                if bool(ended.all()):
                    return tokens[:, : t + 1], stats[:, : t + 1], nan[: t + 1]
        return tokens, stats, nan


def layout_key(groups: Groups) -> tuple:
    """A layout: each slot's method, its parameters that stay Python objects (a null top_k or
    mass, a top_k above ``TOPK_WIDTH``) and its rows. The compiled step compiles once per
    layout; parameter values (top_k, alpha, top_p, temperature, ...) are graph inputs."""
    return tuple((selector.structure(), rows.start, rows.stop) for selector, rows in groups)


def allow_compilations() -> None:
    """One more layout to compile: dynamo's recompile limit (8 by default) would fail a
    fullgraph compilation past it, so raise it to what this process needs."""
    config = torch._dynamo.config
    _LAYOUTS[0] += 1  # every decoder's: they share the step's code object, the limit's unit
    config.recompile_limit = max(config.recompile_limit, _LAYOUTS[0] + 1)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit,
                                             2 * _LAYOUTS[0] + 8)


_LAYOUTS = [0]  # layouts compiled in this process, all decoders
_DECODER: list[Decoder] = []  # the process's one decoder (its cache is the big allocation)


def decoder(loaded: LoadedModel, rows: int, prompt_tokens: int, new_tokens: int,
            compile: bool) -> Decoder:
    """This process's decoder of that shape, made (and compiled) on first use."""
    key = (id(loaded.model), rows, prompt_tokens, new_tokens, compile)
    if not _DECODER or _DECODER[0].key != key:
        release_decoder()  # the previous cache first
        _DECODER.append(Decoder(loaded, rows, prompt_tokens, new_tokens, compile))
    return _DECODER[0]


def release_decoder() -> None:
    """Drop the process's decoder and hand its cache back to the device."""
    devices = {dec.keys.device for dec in _DECODER}
    _DECODER.clear()
    if any(device.type == "cuda" for device in devices):
        torch.cuda.empty_cache()


def decode_batch(loaded: LoadedModel, batch: list[Row | None], groups: Groups, gen: Any,
                 stop: Any) -> list[dict] | None:
    """One batch's records, one per real row (None if a signal cut it short)."""
    real = [row for row in batch if row is not None]
    padded = [row or real[0] for row in batch]  # dummy rows decode a real prompt, then vanish
    device = loaded.device
    dec = decoder(loaded, len(batch), gen.prompt_tokens, gen.max_new_tokens, gen.compile)
    input_ids = torch.tensor([list(r.prompt.input_ids) for r in padded], device=device)
    keys = row_keys(torch.tensor([r.seed for r in padded]),
                    torch.tensor([r.prompt.prompt_id for r in padded]))
    alive = torch.tensor([row is not None for row in batch], device=device)
    # the steps of the batch in flight: a batch of a study takes minutes, the rows' bar moves
    # only when it ends; on a terminal only (disable=None): in a log (SLURM, a pipe) a bar per
    # batch is noise, and the rows' bar already says how far the job is
    with torch.inference_mode(), tqdm(total=gen.max_new_tokens, unit="step", leave=False,
                                      desc=f"batch of {len(batch)} rows", disable=None,
                                      dynamic_ncols=True) as bar:
        done = dec.run(input_ids, keys.to(device), groups, gen.diagnostics, alive, stop,
                       bar.update)
    if done is None:
        return None
    tokens, stats, nan = (t.cpu() for t in done)
    if bool(nan.any()):
        raise nan_error(int(nan.int().argmax()) + 1,
                        ", ".join(sorted({s.name for s, _ in groups})))
    index = [i for i, row in enumerate(batch) if row is not None]
    new = tokens[index]
    lengths, has_eos = continuation_lengths(new, loaded.eos_token_ids)
    diagnostics = (summarize_steps(stats[:, :, index], lengths + has_eos.int())
                   if gen.diagnostics else [{} for _ in index])
    decode = loaded.tokenizer.decode
    return [{"prompt_id": row.prompt.prompt_id, "seed": row.seed, "prompt": row.prompt.prompt,
             "continuation": decode(row_tokens[:n], skip_special_tokens=True),
             "reference": row.prompt.reference, "num_tokens": n,
             "finish_reason": "eos" if eos else "length", **diag}
            for row, row_tokens, n, eos, diag in zip(real, new, lengths.tolist(),
                                                     has_eos.tolist(), diagnostics, strict=True)]


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (CUDA: the driver's count; CPU: MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def releasable_memory(device: torch.device) -> int:
    """Bytes a new group could have beyond ``free_memory``: the previous group's static cache
    (still held, so that a group of the same shape reuses it and its compiled graphs; else
    released before the next is made) and, on CUDA, what torch's allocator holds unused (what
    ``empty_cache`` would hand back). Counted, not freed: a later group sizes its batch on the
    memory the first one saw."""
    held = sum(dec.cache_bytes() for dec in _DECODER if dec.keys.device == device)
    if device.type == "cuda":
        held += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return held


def kv_bytes_per_token(loaded: LoadedModel) -> int:
    """One position of one row's KV cache, all layers."""
    config = loaded.model.config.get_text_config(decoder=True)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * loaded.model.dtype.itemsize


def bytes_per_row(loaded: LoadedModel, prompt_tokens: int, new_tokens: int) -> int:
    """What one more row costs: its KV cache, the logits step's float32 temporaries and the
    prefill's activations."""
    config = loaded.model.config.get_text_config(decoder=True)
    length = prompt_tokens + new_tokens
    logits = LOGITS_COPIES * config.vocab_size * 4
    prefill = prompt_tokens * (4 * config.hidden_size + 3 * config.intermediate_size) * (
        loaded.model.dtype.itemsize) + config.num_attention_heads * prompt_tokens * length * 4
    return kv_bytes_per_token(loaded) * length + logits + prefill


def auto_batch_size(loaded: LoadedModel, prompt_tokens: int, new_tokens: int, rows: int) -> int:
    """The largest batch that fits ``MEMORY_MARGIN`` of the free memory (the previous group's
    cache counted as free: ``releasable_memory``), at most ``rows``."""
    free = free_memory(loaded.device) + releasable_memory(loaded.device)
    fits = int(free * MEMORY_MARGIN) // bytes_per_row(loaded, prompt_tokens, new_tokens)
    return max(1, min(fits, rows))


def warn_of_parts(jobs_rows: list[list[Row]], rows_per_forward: int) -> None:
    """More jobs (with rows left) than rows per forward run in parts (``batches``), each with
    its own layout: one compilation per distinct one."""
    jobs = sum(1 for rows in jobs_rows if rows)
    parts = -(-jobs // rows_per_forward)
    if parts > 1:
        log.warning("generation.compile: %d jobs at %d rows per forward run in %d parts, one "
                    "compilation per distinct layout; more rows per forward "
                    "(generation.batch_size) compile fewer", jobs, rows_per_forward, parts)


def generate(loaded: LoadedModel, jobs_rows: list[list[Row]], gen: Any, batch_size: int | str,
             stop: Any, write: Callable[[list[Row], list[dict]], None]) -> int | None:
    """Decode every row of ``jobs_rows`` (one list per job, in the group's job order), handing
    each finished batch's (rows, records) to ``write``. ``batch_size``: an int or ``"auto"``;
    with auto, an out-of-memory error halves it and retries the batch in flight (finished
    batches are already written). Returns the rows per forward used last (None: no rows), or
    None as soon as ``stop.signum`` is set."""
    pending = [list(rows) for rows in jobs_rows]
    total = sum(map(len, pending))
    if not total:
        return None
    auto = batch_size == "auto"
    # never more rows than the group has: a lone small job decodes no dummy rows
    size = auto_batch_size(loaded, gen.prompt_tokens, gen.max_new_tokens, total) if auto \
        else min(int(batch_size), total)
    if auto:
        log.info("generation.batch_size=auto: %d rows per forward (%s, %d rows to generate)",
                 size, loaded.device, total)
    while True:
        if gen.compile:  # again after an out-of-memory halving: more parts
            warn_of_parts(pending, size)
        try:
            for batch, groups in batches(pending, size):
                records = decode_batch(loaded, batch, groups, gen, stop)
                if records is None:
                    return None
                real = [row for row in batch if row is not None]
                write(real, records)
                finished = {id(row) for row in real}
                pending = [[r for r in rows if id(r) not in finished] for rows in pending]
            return size
        except torch.OutOfMemoryError as error:
            release_decoder()
            if not auto or size == 1:
                raise torch.OutOfMemoryError(
                    f"generation.batch_size={size} does not fit in {loaded.device}'s memory "
                    f"({error}). Every finished batch is written: re-run with "
                    "generation.batch_size=auto or a smaller size to resume.") from error
            size //= 2
            log.warning("out of memory: generation.batch_size=auto now %d rows per forward",
                        size)
