"""Group-sequential boundaries: error spending over looks at accumulating prompts, so that a
study may look at its comparisons after every extension and stop each one as soon as it is
decided, with the chance of any false "different" kept at the level.

A comparison's z statistic at look k, Z_k = Δ̂_k / SE(Δ̂_k), is (for a statistic that is a
smooth function of per-prompt sums) asymptotically the canonical joint distribution of
Jennison & Turnbull (2000, ch. 3): Z_k = B(t_k) / √t_k for a Brownian motion B with drift θ,
t_k = n_k / n_max the information fraction. A spending function α(t) says how much of the
two-sided level has been used by fraction t; the boundary c_k of look k is the one whose
first-crossing probability under θ = 0 is α(t_k) − α(t_{k−1}), given the earlier boundaries
(Lan & DeMets 1983). The crossing probabilities are computed by the Armitage–McPherson–Rowe
recursion: the density of B(t_k) on the continuation region, carried from look to look by
convolution with the normal increment, integrated by Simpson's rule on a fine grid.

Pure numpy/scipy. ``boundaries`` is what a study uses; ``wang_tsiatis`` (the classical
Pocock and O'Brien–Fleming constants), ``exit_probabilities`` and ``drift_for_power`` are the
same recursion with other inputs, for designs and tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm
from scipy.stats import t as student

GRID = 401  # Simpson points per look: boundaries agree with gsDesign/rpact to ~1e-7
SPAN = 10.0  # a grid never reaches further than mean ± SPAN sd of B(t)


def obrien_fleming(alpha: float, t: np.ndarray) -> np.ndarray:
    """Lan–DeMets O'Brien–Fleming-type spending of a one-sided level α: 2 − 2Φ(z_{1−α/2}/√t)
    (gsDesign's ``sfLDOF``, rpact's ``asOF``). Spends almost nothing early and nearly all of α
    at the end, so the last boundary stays close to the fixed design's."""
    t = np.asarray(t, float)
    with np.errstate(divide="ignore"):
        return np.where(t > 0, 2 * norm.sf(norm.isf(alpha / 2) / np.sqrt(np.maximum(t, 1e-300))),
                        0.0)


def pocock(alpha: float, t: np.ndarray) -> np.ndarray:
    """Lan–DeMets Pocock-type spending of a one-sided level α: α · ln(1 + (e − 1)·t)
    (``sfLDPocock``, ``asP``). Nearly constant boundaries: easier early stops, a higher last
    boundary."""
    return alpha * np.log1p((math.e - 1) * np.asarray(t, float))


SPENDING: dict[str, Callable[[float, np.ndarray], np.ndarray]] = {
    "obrien_fleming": obrien_fleming, "pocock": pocock}


def spending_function(spending: str | Callable) -> Callable[[float, np.ndarray], np.ndarray]:
    if callable(spending):
        return spending
    if spending not in SPENDING:
        raise ValueError(f"spending={spending!r}: no such spending function; use one of "
                         f"{', '.join(SPENDING)}.")
    return SPENDING[spending]


def spent(alpha: float, fractions: Sequence[float], spending: str | Callable = "obrien_fleming",
          sides: int = 2) -> np.ndarray:
    """The level used up by each fraction: each side spends ``spending(alpha / sides, t)``."""
    t = np.asarray(fractions, float)
    return np.minimum(sides * spending_function(spending)(alpha / sides, t), alpha)


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    t = np.asarray(fractions, float)
    if t.ndim != 1 or not len(t) or t[0] <= 0 or t[-1] > 1 + 1e-12 or np.any(np.diff(t) <= 0):
        raise ValueError(f"information fractions {list(fractions)} must increase within "
                         "(0, 1].")
    return t


def _simpson(lo: float, hi: float, points: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(lo, hi, points)
    w = np.ones(points)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return x, w * (x[1] - x[0]) / 3


class _Recursion:
    """The sub-density of B(t_k) on the continuation region of looks 1..k (mass = the chance
    of not having stopped yet), one look at a time."""

    def __init__(self, drift: float, sides: int) -> None:
        self.drift, self.sides = drift, sides
        self.t = 0.0
        self.x: np.ndarray | None = None  # grid of B(t_k), and density x Simpson weights
        self.mass: np.ndarray | None = None

    def crossing(self, t: float, c: float) -> float:
        """P(no stop before, |Z| >= c at fraction t) (upper only for one-sided): from each
        grid point of the previous look (or from 0), the chance that B(t) ends beyond ±h."""
        h = c * math.sqrt(t)
        step = t - self.t
        mean, sd = self.drift * step, math.sqrt(step)
        start, weights = (np.zeros(1), np.ones(1)) if self.x is None else (self.x, self.mass)
        beyond = norm.sf((h - start - mean) / sd)
        if self.sides == 2:
            beyond = beyond + norm.cdf((-h - start - mean) / sd)
        return float(weights @ beyond)

    def advance(self, t: float, c: float) -> None:
        """Condition on not stopping at this look (boundary c at fraction t)."""
        h = c * math.sqrt(t) if np.isfinite(c) else math.inf
        centre, spread = self.drift * t, math.sqrt(t)
        lo = max(-h if self.sides == 2 else -math.inf, centre - SPAN * spread)
        hi = min(h, centre + SPAN * spread)
        x, w = _simpson(lo, hi)
        step = t - self.t
        mean, sd = self.drift * step, math.sqrt(step)
        if self.x is None:
            density = norm.pdf(x, mean, sd)
        else:
            z = (x[:, None] - self.x[None, :] - mean) / sd
            density = np.exp(-0.5 * z * z) @ self.mass / (sd * math.sqrt(2 * math.pi))
        self.x, self.mass, self.t = x, density * w, t


def boundaries(fractions: Sequence[float], alpha: float,
               spending: str | Callable = "obrien_fleming", sides: int = 2) -> np.ndarray:
    """The z boundaries c_1..c_K at the given information fractions (increasing, the last 1
    where the study ends there) for an overall level ``alpha``: two-sided (``sides=2``: stop
    when |Z_k| >= c_k, each side spending α/2 as ``spending`` says, the convention of gsDesign
    and rpact) or one-sided (Z_k >= c_k). A look that may spend nothing gets c = inf."""
    t = _check_fractions(fractions)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha}: must lie in (0, 1).")
    cumulative = spent(alpha, t, spending, sides)
    recursion = _Recursion(0.0, sides)
    used, bounds = 0.0, []
    for t_k, target in zip(t, cumulative, strict=True):
        increment = target - used
        if increment <= 1e-15:
            c = math.inf
        else:
            c = brentq(lambda c, t_k=t_k, increment=increment:
                       recursion.crossing(t_k, c) - increment, 1e-6, 40.0, xtol=1e-10)
            used += recursion.crossing(t_k, c)
        bounds.append(c)
        recursion.advance(t_k, c)
    return np.array(bounds)


def exit_probabilities(bounds: Sequence[float], fractions: Sequence[float],
                       drift: float = 0.0, sides: int = 2) -> np.ndarray:
    """P(the first crossing is at look k), k = 1..K, when Z_K ~ N(drift, 1) at fraction 1
    (θ = drift: the standardized effect at the full information)."""
    t = _check_fractions(fractions)
    recursion = _Recursion(drift, sides)
    out = []
    for t_k, c in zip(t, bounds, strict=True):
        out.append(recursion.crossing(t_k, c) if np.isfinite(c) else 0.0)
        recursion.advance(t_k, c)
    return np.array(out)


def wang_tsiatis(looks: int, alpha: float, shape: float, sides: int = 2) -> np.ndarray:
    """The classical boundaries c·(k/K)^(shape − ½) at K equally spaced looks with overall
    level ``alpha``: shape ½ is Pocock's constant boundary, 0 O'Brien–Fleming's."""
    t = np.arange(1, looks + 1) / looks
    profile = t ** (shape - 0.5)
    c = brentq(lambda c: exit_probabilities(c * profile, t, sides=sides).sum() - alpha,
               0.5, 10.0, xtol=1e-10)
    return c * profile


def drift_for_power(bounds: Sequence[float], fractions: Sequence[float], power: float,
                    sides: int = 2) -> float:
    """θ at which the boundaries are crossed (upper side) with probability ``power``."""
    def upper(theta: float) -> float:
        return exit_probabilities(bounds, fractions, theta, sides=1).sum()

    return brentq(lambda theta: upper(theta) - power, 0.0, 20.0, xtol=1e-10)


def inflation(bounds: Sequence[float], fractions: Sequence[float], alpha: float,
              power: float) -> float:
    """n_max / n_fixed: how many more prompts the sequential design needs at its last look
    than a fixed design of the same two-sided level and power (1 for a single look)."""
    fixed = norm.isf(alpha / 2) + norm.ppf(power)
    return (drift_for_power(bounds, fractions, power) / fixed) ** 2


def expected_fraction(bounds: Sequence[float], fractions: Sequence[float],
                      drift: float) -> float:
    """E[t at stop] when stopping only at a crossing (or at the last look)."""
    t = np.asarray(fractions, float)
    exits = exit_probabilities(bounds, t, drift)
    return float(exits[:-1] @ t[:-1] + (1 - exits[:-1].sum()) * t[-1])


# ---- the design of a study and its decisions ------------------------------------------------

def look_counts(pilot: int, max_prompts: int, looks: int) -> list[int]:
    """``looks`` prompt counts from ``pilot`` to ``max_prompts``, geometrically spaced (each
    look multiplies the prompts by the same factor), distinct and increasing."""
    if looks < 1 or pilot < 2 or max_prompts < pilot:
        raise ValueError(f"looks={looks}, pilot={pilot}, max_prompts={max_prompts}: need "
                         "looks >= 1 and 2 <= pilot <= max_prompts.")
    if looks == 1:
        return [max_prompts]
    raw = np.rint(np.geomspace(pilot, max_prompts, looks)).astype(int)
    return sorted({*raw.tolist(), pilot, max_prompts})


def on_t_scale(boundary: float, prompts: int) -> float:
    """The boundary for a z whose SE is estimated from ``prompts`` prompts: the Student t
    quantile (prompts − 1 degrees of freedom) of the same nominal level. Jennison & Turnbull's
    approximation for group-sequential t-tests; without it the heavier tails of an estimated
    SE make early looks of a small pilot exceed their share of α."""
    if not np.isfinite(boundary) or prompts < 2:
        return boundary
    return float(student.isf(norm.sf(boundary), prompts - 1))


DIFFERENT, WITHIN, UNDECIDED, IDENTICAL = "different", "within ±δ", "undecided", "identical"


def decide(delta_hat: np.ndarray, se: np.ndarray, boundary: float, margin: float,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decisions at one look for arrays of comparisons: the repeated confidence interval
    Δ̂ ± c·SE (Jennison & Turnbull ch. 9: it covers Δ at every look at once with probability
    1 − α), "different" where it excludes 0 (|Z| >= c), else "within ±δ" where it lies inside
    (−margin, margin), else "undecided". Returns (decisions, low, high)."""
    delta_hat, se = np.asarray(delta_hat, float), np.asarray(se, float)
    half = boundary * se if np.isfinite(boundary) else np.full_like(se, np.inf)
    low, high = delta_hat - half, delta_hat + half
    decision = np.where((low > 0) | (high < 0), DIFFERENT,
                        np.where((low > -margin) & (high < margin), WITHIN, UNDECIDED))
    return decision, low, high


def first_decisions(delta_hat: np.ndarray, se: np.ndarray, bounds: Sequence[float],
                    margin: float, prompts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """For ``[studies, looks]`` of estimates and SEs at successive looks (of ``prompts``
    prompts each): each study's first decision and the look (0-based) it came at; a study
    decided at no look is "undecided" at the last. What a study does, vectorised over
    simulated studies."""
    decisions = np.stack([decide(delta_hat[:, k], se[:, k], on_t_scale(c, n), margin)[0]
                          for k, (c, n) in enumerate(zip(bounds, prompts, strict=True))],
                         axis=1)
    decided = decisions != UNDECIDED
    look = np.where(decided.any(1), decided.argmax(1), len(bounds) - 1)
    return decisions[np.arange(len(look)), look], look
