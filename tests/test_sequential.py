"""Group-sequential boundaries against published values (rpact's and gsDesign's own unit
tests, which reproduce Jennison & Turnbull's tables), the recursion against Monte Carlo, and
the study's stopping rule by simulation on per-prompt paired differences of a real pilot."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from analysis.sequential import (
    DIFFERENT,
    UNDECIDED,
    WITHIN,
    boundaries,
    decide,
    drift_for_power,
    exit_probabilities,
    expected_fraction,
    first_decisions,
    inflation,
    look_counts,
    obrien_fleming,
    pocock,
    spent,
    wang_tsiatis,
)
from tests.conftest import ROOT

THIRDS = [1 / 3, 2 / 3, 1]


def test_lan_demets_obrien_fleming_three_equal_looks():
    # rpact getDesignGroupSequential(kMax=3, alpha=0.025, sided=1, typeOfDesign="asOF") and
    # gsDesign(k=3, test.type=1, alpha=0.025, sfu=sfLDOF): 3.7103, 2.5114, 1.9930
    assert boundaries(THIRDS, 0.025, sides=1) == pytest.approx([3.7103, 2.5114, 1.9930],
                                                               abs=1e-4)
    # two-sided 5%: each side spends 2.5% (gsDesign test.type=2, rpact sided=2); the chance of
    # crossing one side after the other is negligible, so the same boundaries
    assert boundaries(THIRDS, 0.05) == pytest.approx([3.7103, 2.5114, 1.9930], abs=1e-4)


def test_linear_spending_at_unequal_fractions_and_its_inflation():
    # rpact's unit test: asHSD with gammaA = 0 (spending α·t), fractions 0.2, 0.4, 1,
    # one-sided α = 0.03: 2.5121443, 2.4228747, 2.0280392; inflation factor 1.0788327 at
    # power 0.86
    linear = lambda alpha, t: alpha * np.asarray(t)  # noqa: E731
    bounds = boundaries([0.2, 0.4, 1], 0.03, linear, sides=1)
    assert bounds == pytest.approx([2.5121443, 2.4228747, 2.0280392], abs=1e-6)
    drift = drift_for_power(bounds, [0.2, 0.4, 1], 0.86, sides=1)
    assert (drift / (norm.isf(0.03) + norm.ppf(0.86))) ** 2 == pytest.approx(1.0788327,
                                                                              abs=1e-6)


def test_classical_constants():
    # O'Brien–Fleming K=3, one-sided 2.5% (rpact's default design): 3.4710914, 2.4544323,
    # 2.0040356; K=4 two-sided 5% (gsDesign's unit test, Anderson 2008): 4.05, 2.86, 2.34, 2.02
    assert wang_tsiatis(3, 0.025, 0, sides=1) == pytest.approx(
        [3.4710914, 2.4544323, 2.0040356], abs=1e-6)
    assert np.round(wang_tsiatis(4, 0.05, 0), 2) == pytest.approx([4.05, 2.86, 2.34, 2.02])
    # Pocock's constants (Jennison & Turnbull Table 2.1): 2.289, 2.361, 2.413 at K = 3, 4, 5;
    # O'Brien–Fleming's last boundary at K = 5: 2.040
    assert [round(wang_tsiatis(k, 0.05, 0.5)[0], 3) for k in (3, 4, 5)] == [2.289, 2.361, 2.413]
    assert wang_tsiatis(5, 0.05, 0)[-1] == pytest.approx(2.040, abs=5e-4)


def test_pocock_inflation_and_expected_sample_sizes():
    # Jennison & Turnbull Table 2.7 via gsDesign's unit test: Pocock K=4, two-sided 5%, 80%
    # power: n_max = 1.202 x fixed; E[N] = 1.175, 1.088, 0.805, 0.522 x fixed at θ = 0,
    # δ/2, δ, 1.5δ
    t = np.arange(1, 5) / 4
    bounds = wang_tsiatis(4, 0.05, 0.5)
    ratio = inflation(bounds, t, 0.05, 0.8)
    assert round(ratio, 3) == 1.202
    theta = (norm.isf(0.025) + norm.ppf(0.8)) * math.sqrt(ratio)
    assert [round(expected_fraction(bounds, t, theta * f) * ratio, 3) for f in
            (0, 0.5, 1, 1.5)] == [1.175, 1.088, 0.805, 0.522]


def test_first_look_boundary_is_the_normal_quantile_of_what_it_spends():
    # nothing was spent before the first look, so its boundary is z at the spent level itself
    for spending in ("obrien_fleming", "pocock"):
        for first in (0.1, 0.3, 0.5):
            level = spent(0.05, [first], spending)[0]
            assert boundaries([first, 1], 0.05, spending)[0] == pytest.approx(
                norm.isf(level / 2), abs=1e-7)
    assert pocock(0.025, np.array([1.0]))[0] == pytest.approx(0.025)
    assert obrien_fleming(0.025, np.array([1.0]))[0] == pytest.approx(0.025)
    assert obrien_fleming(0.025, np.array([0.0]))[0] == 0


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_crossing_probabilities_match_monte_carlo(spending):
    """Independent of the recursion: simulate Brownian motion at uneven looks; each look's
    first crossing must use up exactly the spending function's increment."""
    t = np.array([0.15, 0.4, 0.55, 1.0])
    bounds = boundaries(t, 0.05, spending)
    rng = np.random.default_rng(1)
    steps = rng.normal(size=(400_000, len(t))) * np.sqrt(np.diff(t, prepend=0))
    z = np.cumsum(steps, axis=1) / np.sqrt(t)
    crossed = np.abs(z) >= bounds
    first = np.where(crossed.any(1), crossed.argmax(1), -1)
    observed = np.array([(first == k).mean() for k in range(len(t))])
    expected = np.diff(spent(0.05, t, spending), prepend=0)
    assert exit_probabilities(bounds, t) == pytest.approx(expected, abs=1e-7)
    assert np.all(np.abs(observed - expected) <= 4 * np.sqrt(expected / 400_000) + 1e-5)
    # and under a drift, against the same simulation shifted
    theta = 2.5
    z_alt = (np.cumsum(steps, axis=1) + theta * t) / np.sqrt(t)
    power = (np.abs(z_alt) >= bounds).any(1).mean()
    assert exit_probabilities(bounds, t, theta).sum() == pytest.approx(power, abs=0.003)


def test_pocock_type_spending_gives_nearly_constant_boundaries():
    bounds = boundaries(np.arange(1, 6) / 5, 0.05, "pocock")
    assert np.ptp(bounds) < 0.06  # Pocock-type: close to the classical constant 2.413
    assert bounds.mean() == pytest.approx(wang_tsiatis(5, 0.05, 0.5)[0], abs=0.06)
    # O'Brien–Fleming-type spends nearly everything at the end: the last boundary is near 1.96
    assert boundaries(np.arange(1, 6) / 5, 0.05)[-1] == pytest.approx(2.04, abs=0.02)


def test_a_look_that_may_spend_nothing_cannot_stop():
    nothing_first = lambda alpha, t: alpha * (np.asarray(t) >= 1)  # noqa: E731
    bounds = boundaries([0.5, 1.0], 0.05, nothing_first)
    assert math.isinf(bounds[0]) and bounds[1] == pytest.approx(norm.isf(0.025), abs=1e-7)


def test_bad_fractions_and_levels_are_refused():
    for fractions in ([0.5, 0.5, 1], [0, 1], [0.5, 1.2], []):
        with pytest.raises(ValueError, match="fractions"):
            boundaries(fractions, 0.05)
    with pytest.raises(ValueError, match="alpha"):
        boundaries([1.0], 1.5)
    with pytest.raises(ValueError, match="no such spending"):
        boundaries([1.0], 0.05, "haybittle")


def test_look_counts_are_geometric_from_pilot_to_max():
    assert look_counts(20, 320, 5) == [20, 40, 80, 160, 320]
    assert look_counts(24, 500, 1) == [500]
    counts = look_counts(10, 1000, 4)
    assert counts[0] == 10 and counts[-1] == 1000
    assert np.diff(np.log(counts)) == pytest.approx([np.log(100) / 3] * 3, abs=0.01)
    with pytest.raises(ValueError):
        look_counts(50, 20, 3)


def test_decisions_from_the_repeated_confidence_interval():
    decision, low, high = decide(np.array([3.0, 0.1, 0.1, -2.5, 0.0]),
                                 np.array([1.0, 0.1, 1.0, 1.0, 0.0]), 2.0, 1.0)
    assert decision.tolist() == [DIFFERENT, WITHIN, UNDECIDED, DIFFERENT, WITHIN]
    assert low.tolist() == pytest.approx([1.0, -0.1, -1.9, -4.5, 0.0])
    assert high.tolist() == pytest.approx([5.0, 0.3, 2.1, -0.5, 0.0])
    # a look that cannot stop decides nothing
    assert decide(np.array([9.0]), np.array([0.1]), math.inf, 1.0)[0].tolist() == [UNDECIDED]


# ---- the stopping rule by simulation ----------------------------------------------------------

PILOT = ROOT / "tests" / "data" / "pilot_differences.csv"
STUDIES = 2000


def pilot_differences() -> dict[tuple[str, str], np.ndarray]:
    """Per-prompt paired differences (row - baseline) of a real pilot: the bundled SmolLM2 on
    Austen, the README's study walkthrough at 32 prompts (how the file was made: its
    header)."""
    frame = pd.read_csv(PILOT, comment="#")
    return {key: group["difference"].to_numpy() for key, group in
            frame.groupby(["comparison", "metric"])}


def simulate(differences: np.ndarray, shift: float, looks: list[int], alpha: float,
             spending: str, margin: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """STUDIES studies whose prompts are drawn from the pilot's differences, centred and
    shifted to a true Δ of ``shift``; at each look the paired Δ̂ (a mean over prompts) and its
    SE; each study's first decision and its look."""
    rng = np.random.default_rng(seed)
    draws = rng.choice(differences - differences.mean(), size=(STUDIES, looks[-1])) + shift
    total, squares = np.cumsum(draws, 1), np.cumsum(draws ** 2, 1)
    n = np.array(looks)
    mean = total[:, n - 1] / n
    se = np.sqrt((squares[:, n - 1] - n * mean ** 2) / (n - 1) / n)
    bounds = boundaries(n / n[-1], alpha, spending)
    return first_decisions(mean, se, bounds, margin, looks)


def design(differences: np.ndarray, alpha: float, spending: str, power: float = 0.8,
           ) -> tuple[float, int, list[int]]:
    """δ such that a fixed design needs 200 prompts, that n, and the looks (pilot 20,
    geometric, 4 looks) up to the sequential design's n_max = inflation x the fixed n."""
    sd = differences.std()
    fixed = 200
    delta = (norm.isf(alpha / 2) + norm.ppf(power)) * sd / math.sqrt(fixed)
    looks = look_counts(20, fixed, 4)  # the fractions; rescaled to n_max below
    ratio = inflation(boundaries(np.array(looks) / looks[-1], alpha, spending),
                      np.array(looks) / looks[-1], alpha, power)
    n_max = math.ceil(ratio * fixed)
    return delta, fixed, look_counts(20, n_max, 4)


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_no_difference_is_called_different_at_most_at_the_level(spending):
    for number, (key, differences) in enumerate(pilot_differences().items()):
        delta, _, looks = design(differences, 0.05, spending)
        decision, _ = simulate(differences, 0.0, looks, 0.05, spending, delta, number)
        # 2,000 studies: the Monte Carlo sd of a 5% rate is 0.5 points
        assert (decision == DIFFERENT).mean() <= 0.06, (key, (decision == DIFFERENT).mean())


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_a_true_difference_of_delta_has_the_planned_power_on_fewer_prompts(spending):
    for number, (key, differences) in enumerate(pilot_differences().items()):
        delta, fixed, looks = design(differences, 0.05, spending)
        decision, look = simulate(differences, delta, looks, 0.05, spending, delta, 100 + number)
        power = (decision == DIFFERENT).mean()
        # the plan's 80% within 2 Monte Carlo sds (0.9 points)
        assert power >= 0.8 - 0.018, (key, power)
        expected_prompts = np.array(looks)[look].mean()
        assert expected_prompts < fixed, (key, expected_prompts, fixed)
        # a comparison decided within ±δ at Δ = δ is a wrong decision: the repeated interval
        # covers Δ at every look with probability 1 - α, so this stays under the level
        assert (decision == WITHIN).mean() <= 0.06, (key, (decision == WITHIN).mean())


def test_no_difference_is_often_decided_within_delta():
    """At Δ = 0 the last look's repeated interval is about ±0.7δ wide (c_K·SE at n_max, with
    δ = 2.8 SE of the fixed n), so it lies inside (−δ, δ) when |Δ̂| < 0.3δ: about 60% of
    studies. Showing equivalence takes more prompts than detecting δ."""
    for number, (key, differences) in enumerate(pilot_differences().items()):
        delta, _, looks = design(differences, 0.05, "obrien_fleming")
        decision, _ = simulate(differences, 0.0, looks, 0.05, "obrien_fleming", delta,
                               200 + number)
        assert 0.5 <= (decision == WITHIN).mean() <= 0.75, (key, (decision == WITHIN).mean())
