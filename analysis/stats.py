"""Uncertainty for the comparison table: paired bootstrap intervals and sign-flip tests over
prompts, Holm's adjustment and minimum detectable effects. Pure numpy, vectorised over
resamples (index-count matrices times per-prompt sums; no Python loop over resamples).

The resample matrices are float32 (their entries are small integers, exact in float32) and so
are the products with them (``resampled``): a replicate's sums carry float32 rounding (a
relative 1e-7 per term), far below the Monte Carlo error of the intervals and p-values, while
the matrices take half the memory and the products half the time. Point estimates and the
observed Δ stay float64.

Every metric is a function of per-prompt sums: ``stat = f(Σ_prompts num, Σ_prompts den)``
(a mean: num = value summed over the prompt's texts, den = its text count; rep-n: unique and
total n-grams; perplexity: NLL and token counts). The resampling unit is the prompt (a prompt's
seeds move together), and every configuration is resampled with the same prompt indices, so
differences between configurations are paired.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

Stat = Callable[[np.ndarray], np.ndarray]  # sums [..., parts] -> statistic [...]


@dataclass
class BootstrapConfig:
    """``bootstrap`` in ``conf/analysis.yaml``."""

    samples: int = 10000  # at least 20 x the number of tests, so min p survives Holm
    seed: int = 0
    level: float = 0.95


def ratio(sums: np.ndarray) -> np.ndarray:
    """Σnum / Σden (the mean of per-text values, or a pooled ratio)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[..., 0] / sums[..., 1]


BLOCK = 2**20  # draws per block: the generator's int64 output is converted block by block


def _blocks(draw: Callable[[int], np.ndarray], samples: int,
            prompts: int) -> Iterator[np.ndarray]:
    """``draw(rows)`` for consecutive blocks of rows, as float32 (the generator's stream is the
    same as one call's for all rows)."""
    step = max(1, BLOCK // max(prompts, 1))
    for start in range(0, samples, step):
        yield draw(min(samples, start + step) - start).astype(np.float32)


def count_blocks(prompts: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """``resample_counts`` block by block of rows."""
    rng = np.random.default_rng(seed)
    probabilities = np.full(prompts, 1 / prompts)
    return _blocks(lambda rows: rng.multinomial(prompts, probabilities, size=rows), samples,
                   prompts)


def flip_blocks(prompts: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """``sign_flips`` block by block of rows."""
    rng = np.random.default_rng(seed + 1)
    return _blocks(lambda rows: rng.integers(0, 2, size=(rows, prompts)), samples, prompts)


def resample_counts(prompts: int, samples: int, seed: int) -> np.ndarray:
    """``[samples, prompts]`` float32: how often each prompt is drawn in each bootstrap
    resample."""
    return np.concatenate([*count_blocks(prompts, samples, seed),
                           np.empty((0, prompts), np.float32)])


def sign_flips(prompts: int, samples: int, seed: int) -> np.ndarray:
    """``[samples, prompts]`` float32 of 0/1: which prompts swap their two configurations."""
    return np.concatenate([*flip_blocks(prompts, samples, seed),
                           np.empty((0, prompts), np.float32)])


def resampled(matrix: np.ndarray | Iterable[np.ndarray], parts: np.ndarray) -> np.ndarray:
    """``matrix @ parts`` in the matrix's dtype (float32: no float64 copy of the matrix), as
    float64 for the statistics; ``matrix`` may come as blocks of rows (never whole in memory)."""
    if isinstance(matrix, np.ndarray):
        return (matrix @ parts.astype(matrix.dtype, copy=False)).astype(float)
    single = parts.astype(np.float32)
    return np.concatenate([block @ single for block in matrix]
                          or [np.empty((0, parts.shape[1]), np.float32)]).astype(float)


def interval(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.nan, np.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap(parts: np.ndarray, stat: Stat, counts: np.ndarray,
              level: float) -> tuple[float, float, float]:
    """Point estimate and percentile interval; ``parts`` is ``[prompts, k]`` per-prompt sums."""
    point = float(stat(parts.sum(0)))
    replicates = stat(resampled(counts, parts))
    return (point, *interval(replicates, level))


def permutation_p(null: np.ndarray, observed: float) -> float:
    """Two-sided (c + 1) / (B + 1): c of the B null replicates are at least as far from 0 as
    ``observed`` (ties within rounding count, and so do NaN replicates)."""
    if not np.isfinite(observed):
        return np.nan
    # A replicate with no value (NaN: e.g. a ratio over nothing) counts as extreme: leaving it
    # out or calling it 0 would make p too small.
    tolerance = 1e-12 * max(1.0, abs(observed))
    exceed = np.sum(np.isnan(null) | (np.abs(null) >= abs(observed) - tolerance))
    return float((exceed + 1) / (len(null) + 1))


@dataclass
class Comparison:
    """Δ with its interval, p-value and bootstrap SE; ``pairs``/``prompts``: what it is over
    (set by ``analysis.uncertainty.compare_rows``)."""

    delta: float
    low: float
    high: float
    p: float
    se: float
    pairs: int = 0
    prompts: int = 0


def compare(parts: np.ndarray, base: np.ndarray, stat: Stat, counts: np.ndarray,
            flips: np.ndarray, level: float) -> Comparison:
    """Δ = stat(configuration) - stat(baseline) on the same prompts: paired-bootstrap interval
    and standard error, and a two-sided paired sign-flip p-value (c + 1) / (B + 1), where each
    replicate swaps the two configurations' texts of a random half of the prompts. Identical
    configurations give Δ = 0 and p = 1 exactly."""
    # what a swap adds to the configuration (and takes from the base)
    return compared(stat, parts.sum(0), base.sum(0), resampled(counts, parts),
                    resampled(counts, base), resampled(flips, base - parts), level)


def compared(stat: Stat, total: np.ndarray, base_total: np.ndarray, replicated: np.ndarray,
             base_replicated: np.ndarray, swapped: np.ndarray, level: float) -> Comparison:
    """``compare`` from the products it needs, for callers that compute them for many
    comparisons at once: the sums over all prompts of the configuration and the baseline
    (``[parts]``), their bootstrap sums (``counts @ parts``, ``[samples, parts]``) and what
    each sign flip moves from the baseline to the configuration (``flips @ (base - parts)``)."""
    delta = float(stat(total) - stat(base_total))
    replicates = stat(replicated) - stat(base_replicated)
    low, high = interval(replicates, level)
    null = stat(total + swapped) - stat(base_total - swapped)
    p = permutation_p(null, delta)
    finite = replicates[np.isfinite(replicates)]
    return Comparison(delta, low, high, p, float(finite.std()) if finite.size else np.nan)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error) of the finite p-values; NaN stays."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def minimum_detectable_effect(se: float) -> float:
    """The Δ a two-sided 5% test detects with 80% power: (1.96 + 0.84) x SE(Δ)."""
    return 2.8 * se
