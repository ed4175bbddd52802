"""Keyed sampling: common random numbers that depend on (seed, prompt, step, token) alone.

The next token of a row is a Gumbel-max draw over its kept set: ``argmax(logit + G)`` with
``G = -log(-log U)``, exact categorical sampling from the kept tokens' renormalised softmax.
``U`` for token v of the row of (seed s, prompt_id i) at generated step t is a counter-based
hash, splitmix64's finaliser chained over (s, i, t, v) in int64 torch ops, with its top 23 bits
as ``(u + 0.5)·2^-23`` (never 0 or 1, so G is always finite). So:

- a record does not depend on which rows share its batch, how many there are, or the device
  (a per-row ``torch.Generator`` would: CPU and CUDA generators draw different streams, and
  a per-row generator loop costs one kernel launch per row per step);
- every configuration sees the same noise for a (seed, prompt, step): two selectors whose kept
  sets both contain the row's overall winner ``argmax_v(logit_v + G_v)`` pick the same token.

Noise is hashed only where a token is kept when few are (top-k style cuts), else in cache-sized
row chunks (on CPU); either way it costs less than the softmax + ``torch.multinomial`` it replaces
(bench/RESULTS.md). ``sample_step(..., graph_safe=True)`` (what ``harness.decode`` runs on a GPU
or compiled) decides nothing from a device value: dense noise, diagnostics ranked by each
selector's own static choice, and NaN reported as a device flag; its draws are the same.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import LogitsProcessor

from harness.selectors import Selector, StepDiagnostics, diagnose_prepared, nan_error

SAMPLER_VERSION = "keyed-gumbel-1"  # part of every record's config hash
NEG_INF = float("-inf")


def _signed(constant: int) -> int:
    return constant - (1 << 64) if constant >= 1 << 63 else constant


GOLDEN = _signed(0x9E3779B97F4A7C15)
MIX = ((30, _signed(0xBF58476D1CE4E5B9)), (27, _signed(0x94D049BB133111EB)), (31, None))
UNIFORM_BITS = 23  # 24 bits times 2^-24 can round to 1.0 in float32: G would be infinite
CPU_ROW_CHUNK = 4  # rows hashed at a time on the dense path on CPU: int64 temporaries stay in
# cache there; a GPU takes the whole batch at once (fewer kernel launches)
SPARSE_SHARE = 1 / 16  # hash only the kept tokens when at most this share of the batch is kept


def mix64(z: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 tensors, in place (multiplication wraps mod 2^64; right
    shifts are made logical by masking)."""
    shifted = torch.empty_like(z)
    for shift, multiplier in MIX:
        torch.bitwise_right_shift(z, shift, out=shifted)
        z.bitwise_xor_(shifted.bitwise_and_((1 << (64 - shift)) - 1))
        if multiplier is not None:
            z.mul_(multiplier)
    return z


def row_keys(seeds: Tensor, prompt_ids: Tensor) -> Tensor:
    """One int64 key per row from its (seed, prompt_id)."""
    key = mix64(seeds.to(torch.int64) * GOLDEN)
    return mix64(key.add_(prompt_ids.to(torch.int64)).mul_(GOLDEN))


def step_keys(keys: Tensor, step: int | Tensor) -> Tensor:
    """The keys of generated step ``step`` (0-based; an int or a 0-d int64 tensor)."""
    return mix64((keys + step).mul_(GOLDEN))


def uniforms(keys: Tensor, tokens: Tensor) -> Tensor:
    """Float32 U in (0, 1) for elementwise (key, token id) pairs of the same shape."""
    z = mix64(keys + tokens * GOLDEN)
    z = torch.bitwise_right_shift(z, 64 - UNIFORM_BITS).bitwise_and_((1 << UNIFORM_BITS) - 1)
    return z.float().add_(0.5).mul_(2.0 ** -UNIFORM_BITS)


def gumbel(u: Tensor) -> Tensor:
    """-log(-log u), in place."""
    return u.log_().neg_().log_().neg_()


def perturb(logits: Tensor, keep: Tensor, keys: Tensor, graph_safe: bool = False) -> Tensor:
    """``logits + G`` where kept, ``-inf`` elsewhere: its row-wise argmax is the sampled token.
    ``logits`` float32 ``[rows, vocab]``; ``keys`` the rows' step keys ``[rows]``. The sparse
    path (few kept) reads the keep count on the host; ``graph_safe`` always takes the dense one,
    which gives the same values."""
    out = torch.full_like(logits, NEG_INF)
    if not graph_safe and keep.sum() <= SPARSE_SHARE * keep.numel():
        rows, tokens = keep.nonzero(as_tuple=True)
        out[rows, tokens] = logits[rows, tokens] + gumbel(uniforms(keys[rows], tokens))
        return out
    vocab = torch.arange(logits.shape[-1], device=logits.device)
    rows = CPU_ROW_CHUNK if logits.device.type == "cpu" else logits.shape[0]
    for start in range(0, logits.shape[0], rows):
        chunk = slice(start, start + rows)
        g = gumbel(uniforms(keys[chunk, None], vocab)).add_(logits[chunk])
        out[chunk] = g.where(keep[chunk], NEG_INF)
    return out


Groups = list[tuple[Selector, slice]]


def sample_step(scores: Tensor, groups: Groups, keys: Tensor, step: int | Tensor,
                record: bool = False, graph_safe: bool = False,
                ) -> tuple[Tensor, StepDiagnostics | None, Tensor]:
    """One decoding step's sampling: each group of rows (a contiguous slice, one configuration)
    keeps what its selector keeps, and the kept logits get the rows' keyed Gumbel noise.
    Returns the perturbed logits (their row-wise argmax is the sample), the step's diagnostics
    (``record``) and a 0-d bool tensor, True where the logits held a NaN. ``graph_safe``: no
    host read of a device value (``torch.compile(fullgraph=True)``, CUDA graphs)."""
    logits = scores.float()
    has_nan = logits.amax().isnan()  # max propagates NaN: one pass, no temporary
    if logits is scores:
        logits = logits.clone()
    keep = torch.empty_like(logits, dtype=torch.bool)
    for selector, rows in groups:
        logits[rows] = selector.prepare(logits[rows])
        keep[rows] = selector.select(logits[rows])
    diagnostics = diagnose_groups(logits, keep, groups, graph_safe) if record else None
    perturbed = perturb(logits, keep, step_keys(keys.to(logits.device), step), graph_safe)
    return perturbed, diagnostics, has_nan


def diagnose_groups(logits: Tensor, keep: Tensor, groups: Groups,
                    graph_safe: bool = False) -> StepDiagnostics:
    """Each group's diagnostics with its own ranking: ``graph_safe``, its selector's static
    choice (count for methods that keep the most probable tokens, else sort); otherwise the
    cheapest exact one for its rows (``"auto"``). Per group because a fused batch holds rows of
    every job: ranked as one batch, a single row of a typical method made every row pay for a
    full-vocabulary sort. ``groups``: consecutive slices from row 0 (``harness.decode.batches``);
    rows after the last (dummy rows) get zeros."""
    stops = [0, *(rows.stop for _, rows in groups)]
    if not groups or [rows.start for _, rows in groups] != stops[:-1]:
        raise ValueError(f"groups {[rows for _, rows in groups]} are not consecutive slices "
                         "from row 0")
    parts = [diagnose_prepared(logits[rows], keep[rows], "auto" if not graph_safe else
                               "count" if selector.keeps_most_probable else "sort")
             for selector, rows in groups]
    dummies = logits.shape[0] - stops[-1]
    return StepDiagnostics(*(torch.cat([*values, values[0].new_zeros(dummies)])
                             for values in zip(*((d.kept, d.mass, d.mean_rank, d.topk_identical)
                                                 for d in parts), strict=True)))


class KeyedSampler(LogitsProcessor):
    """``sample_step`` as the last (and only) logits processor of a greedy-path ``generate``, so
    greedy's argmax draws the sample (the reference that ``harness.decode`` is tested against).

    ``prompt_length`` is the (left-padded) prompt width: step t = current length - it.
    ``record=True`` keeps one ``StepDiagnostics`` per step for the whole batch.
    """

    def __init__(self, groups: Groups, keys: Tensor, prompt_length: int,
                 record: bool = False) -> None:
        self.groups = groups
        self.keys = keys
        self.prompt_length = prompt_length
        self.record = record
        self.steps: list[StepDiagnostics] = []

    def __call__(self, input_ids: torch.LongTensor, scores: Tensor) -> Tensor:
        step = input_ids.shape[1] - self.prompt_length
        perturbed, diagnostics, has_nan = sample_step(scores, self.groups, self.keys, step,
                                                      self.record)
        if has_nan:
            raise nan_error(step + 1, ", ".join(sorted({s.name for s, _ in self.groups})))
        if diagnostics is not None:
            self.steps.append(diagnostics)
        return perturbed
