"""Selectors against independent references: transformers' warpers and plain NumPy math."""

import math
from unittest.mock import patch

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

import harness.selectors
from harness.selectors import SELECTORS, make_selector

INF = float("inf")


@st.composite
def logits(draw, min_vocab: int = 2, max_vocab: int = 48, max_batch: int = 3) -> torch.Tensor:
    """Random, peaked, Zipf-like, tied and partly -inf rows."""
    batch = draw(st.integers(1, max_batch))
    vocab = draw(st.integers(min_vocab, max_vocab))
    kind = draw(st.sampled_from(["normal", "peaked", "zipf", "ties", "floats"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "normal":
        x = torch.randn(batch, vocab, generator=gen) * draw(st.floats(0.1, 8.0))
    elif kind == "peaked":
        x = torch.randn(batch, vocab, generator=gen)
        x[:, 0] += draw(st.floats(3.0, 30.0))
    elif kind == "zipf":
        ranks = torch.arange(1, vocab + 1, dtype=torch.float32)
        noise = 0.01 * torch.randn(batch, vocab, generator=gen)
        x = -draw(st.floats(0.5, 2.0)) * ranks.log() + noise
        x = x[:, torch.randperm(vocab, generator=gen)]
    elif kind == "ties":
        x = torch.randint(-3, 3, (batch, vocab), generator=gen).float()
    else:
        values = st.floats(-20, 20, allow_nan=False, width=32)
        x = torch.tensor(draw(st.lists(st.lists(values, min_size=vocab, max_size=vocab),
                                       min_size=batch, max_size=batch)))
    if draw(st.booleans()):  # some -inf, never a whole row
        drop = torch.rand(batch, vocab, generator=gen) < draw(st.floats(0.0, 0.8))
        drop[:, torch.randint(vocab, (1,), generator=gen)] = False
        x = x.masked_fill(drop, -INF)
    return x


def warper_keep(warpers, x: torch.Tensor) -> torch.Tensor:
    for warper in warpers:
        x = warper(None, x.clone())
    return x > -INF


temperatures = st.sampled_from([1.0, 0.7, 1.5])

STANDARD = {
    "top_k": (st.integers(1, 60), lambda v: TopKLogitsWarper(top_k=v)),
    "top_p": (st.floats(0.01, 1.0), lambda v: TopPLogitsWarper(top_p=v)),
    "typical_p": (st.floats(0.01, 0.99), lambda v: TypicalLogitsWarper(mass=v)),
    "min_p": (st.floats(0.0, 1.0), lambda v: MinPLogitsWarper(min_p=v)),
    "epsilon": (st.floats(1e-5, 0.5), lambda v: EpsilonLogitsWarper(epsilon=v)),
    "eta": (st.floats(1e-5, 0.5), lambda v: EtaLogitsWarper(epsilon=v)),
}
METHOD_OF = {"typical_p": "typical"}


@pytest.mark.parametrize("param", list(STANDARD))
@settings(max_examples=150, deadline=None)
@given(data=st.data(), x=logits(), temperature=temperatures)
def test_standard_methods_match_transformers_warpers(param, data, x, temperature):
    values, make_warper = STANDARD[param]
    value = data.draw(values)
    sel = make_selector(METHOD_OF.get(param, param), **{param: value}, temperature=temperature)
    warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    expected = warper_keep([*warpers, make_warper(value)], x)
    assert torch.equal(sel.keep_mask(x), expected)


@settings(max_examples=100, deadline=None)
@given(x=logits())
def test_greedy_keeps_the_argmax_and_ancestral_keeps_every_finite_token(x):
    greedy = make_selector("greedy").keep_mask(x)
    assert torch.equal(greedy.nonzero()[:, 1], x.argmax(-1))
    assert torch.equal(make_selector("ancestral").keep_mask(x), x > -INF)


@settings(max_examples=150, deadline=None)
@given(x=logits(), n_sigma=st.floats(0.0, 3.0))
def test_top_n_sigma_matches_numpy_reference(x, n_sigma):
    keep = make_selector("top_n_sigma", n_sigma=n_sigma).keep_mask(x)
    for row, kept in zip(x.numpy().astype(np.float64), keep, strict=True):
        finite = row[np.isfinite(row)]
        sigma = finite.std(ddof=1) if finite.size > 1 else 0.0
        threshold = finite.max() - n_sigma * sigma
        assume(np.all(np.abs(finite - threshold) > 1e-4))  # float32 vs float64 at the cut
        assert kept.numpy().tolist() == (np.isfinite(row) & (row >= threshold)).tolist()


def reference_distance(row: np.ndarray, method: str, alpha: float) -> np.ndarray:
    """Plain float64 formulas from the design notes, written independently of the library."""
    finite = np.isfinite(row)
    p = np.zeros_like(row)
    p[finite] = np.exp(row[finite] - row[finite].max())
    p /= p.sum()
    s = np.zeros_like(row)
    s[finite] = -np.log(p[finite])
    h = float(np.sum(p[finite] * s[finite]))
    d = np.full_like(row, np.inf)
    if method == "locally_typical":
        d[finite] = np.abs(s[finite] - h) + alpha * s[finite]
    else:
        d[finite] = np.abs(s[finite] - alpha * h)
    return d


@pytest.mark.parametrize("method", ["locally_typical", "locally_typical_distance"])
@settings(max_examples=200, deadline=None)
@given(x=logits(), alpha=st.floats(0.0, 3.0), top_k=st.integers(1, 50))
def test_seed_distances_match_independent_reference(method, x, alpha, top_k):
    keep = make_selector(method, alpha=alpha, top_k=top_k).keep_mask(x)
    for row, kept in zip(x.numpy().astype(np.float64), keep, strict=True):
        d = reference_distance(row, method, alpha)
        finite_d = np.sort(d[np.isfinite(d)])
        if top_k < finite_d.size:  # skip float32-vs-float64 near-ties at the cut
            assume(finite_d[top_k] - finite_d[top_k - 1] > 1e-4 * max(1.0, finite_d[top_k]))
        expected = np.isfinite(d) & (d <= finite_d[min(top_k, finite_d.size) - 1])
        assert kept.numpy().tolist() == expected.tolist()


@settings(max_examples=150, deadline=None)
@given(x=logits(), top_k=st.integers(1, 50))
def test_seed_methods_keep_only_finite_tokens_and_at_least_one(x, top_k):
    for method in ("locally_typical", "locally_typical_distance"):
        for alpha in (0.0, 0.5, 1.0, 2.0):
            keep = make_selector(method, alpha=alpha, top_k=top_k).keep_mask(x)
            assert not keep[x == -INF].any()
            assert (keep.sum(-1) >= 1).all()
            finite = (x > -INF).sum(-1)
            assert (keep.sum(-1) >= torch.minimum(finite, torch.tensor(top_k))).all()


distinct_logits = logits().filter(
    lambda x: all(np.diff(np.sort(r[np.isfinite(r)])).min(initial=1.0) > 1e-2 for r in x.numpy()))


@settings(max_examples=150, deadline=None)
@given(x=distinct_logits, alpha=st.floats(1.0001, 50.0), top_k=st.integers(1, 50))
def test_additive_alpha_above_one_is_exactly_top_k(x, alpha, top_k):
    with pytest.warns(UserWarning, match="degenerate"):
        sel = make_selector("locally_typical", alpha=alpha, top_k=top_k)
    assert torch.equal(sel.keep_mask(x), make_selector("top_k", top_k=top_k).keep_mask(x))


def test_additive_alpha_one_ties_every_token_more_probable_than_entropy():
    x = torch.tensor([[2.0, 1.9, 1.8, 1.7, 0.0, -1.0, -2.0]])
    logp = x.log_softmax(-1)
    h = -(logp.exp() * logp).sum()
    score = make_selector("locally_typical", alpha=1.0).score(x)
    below_h = -logp < h
    assert below_h.sum() >= 2
    torch.testing.assert_close(score[below_h], h.expand(int(below_h.sum())))


@settings(max_examples=150, deadline=None)
@given(x=distinct_logits, fraction=st.floats(0.0, 1.0), top_k=st.integers(1, 50))
def test_scaling_form_is_top_k_when_alpha_h_below_top_surprisal(x, fraction, top_k):
    logp = x.log_softmax(-1)
    h = -(logp.exp() * logp).nansum(-1)
    bound = float((-logp.amax(-1) / h.clamp_min(1e-9)).min())  # alpha·H <= -log p_max, every row
    sel = make_selector("locally_typical_distance", alpha=fraction * min(bound, 10.0), top_k=top_k)
    assert torch.equal(sel.keep_mask(x), make_selector("top_k", top_k=top_k).keep_mask(x))


def test_scaling_form_low_tau_band_is_top_k_on_zipf():
    """The notes' "tau 0.1-0.3 is near top-p" band is identical to top-k on Zipf-like rows."""
    vocab = 49152
    x = -1.1 * torch.arange(1, vocab + 1, dtype=torch.float32).log().expand(4, vocab)
    x = x[:, torch.randperm(vocab, generator=torch.Generator().manual_seed(0))]
    top_k = make_selector("top_k", top_k=10).keep_mask(x)
    for tau in (0.1, 0.2, 0.3):
        assert torch.equal(make_selector("locally_typical_distance", alpha=tau).keep_mask(x), top_k)
    assert not torch.equal(make_selector("locally_typical_distance", alpha=1.0).keep_mask(x), top_k)


def test_one_softmax_not_two():
    """Distances use softmax(logits); a second softmax would select far down the ranking."""
    x = torch.randn(1, 5000, generator=torch.Generator().manual_seed(1)) * 3
    keep = make_selector("locally_typical", alpha=0.0, top_k=10).keep_mask(x)
    d = reference_distance(x[0].double().numpy(), "locally_typical", 0.0)
    assert set(keep[0].nonzero().flatten().tolist()) == set(np.argsort(d)[:10].tolist())


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@settings(max_examples=40, deadline=None)
@given(x=logits())
def test_half_precision_inputs_select_like_their_float32_upcast(name, dtype, x):
    sel = make_selector(name)
    low = x.to(dtype)
    assert torch.equal(sel.keep_mask(low), sel.keep_mask(low.float()))


@pytest.mark.parametrize("name", sorted(SELECTORS))
@settings(max_examples=40, deadline=None)
@given(x=logits(min_vocab=4))
def test_rows_are_independent(name, x):
    sel = make_selector(name)
    keep = sel.keep_mask(x)
    for i in range(x.shape[0]):
        assert torch.equal(keep[i : i + 1], sel.keep_mask(x[i : i + 1]))


@pytest.mark.parametrize(
    ("method", "params", "mass"),
    [("locally_typical", {"alpha": 0.3}, 0.9), ("locally_typical_distance", {"alpha": 0.7}, 0.5)],
)
def test_mass_cut_on_distances_is_the_shorter_prefix(method, params, mass):
    x = torch.randn(4, 300, generator=torch.Generator().manual_seed(2)) * 2
    by_mass = make_selector(method, **params, top_k=None, mass=mass).keep_mask(x)
    by_k = make_selector(method, **params, top_k=10).keep_mask(x)
    both = make_selector(method, **params, top_k=10, mass=mass).keep_mask(x)
    assert torch.equal(both, by_mass & by_k)
    d = make_selector(method, **params).score(x)
    for row in range(4):  # smallest best-first prefix with mass >= p
        order = d[row].argsort()
        probs = x[row].softmax(-1)[order]
        n = int(by_mass[row].sum())
        assert probs[:n].sum() >= mass - 1e-6 > probs[: n - 1].sum()


@pytest.mark.parametrize(
    ("method", "params", "key"),
    [
        ("top_k", {"top_k": 0}, "top_k=0"),
        ("top_k", {"top_k": 2.5}, "top_k=2.5"),
        ("top_p", {"top_p": 0.0}, "top_p=0.0"),
        ("top_p", {"top_p": 1.2}, "top_p=1.2"),
        ("typical", {"typical_p": 1.5}, "typical_p=1.5"),
        ("typical", {"typical_p": 1.0}, "typical_p=1.0"),
        ("min_p", {"min_p": -0.1}, "min_p=-0.1"),
        ("epsilon", {"epsilon": 0.0}, "epsilon=0.0"),
        ("eta", {"eta": 1.0}, "eta=1.0"),
        ("locally_typical", {"alpha": -1.0}, "alpha=-1.0"),
        ("locally_typical_distance", {"top_k": 0}, "top_k=0"),
        ("locally_typical", {"top_k": None, "mass": None}, "top_k and mass"),
        ("top_n_sigma", {"n_sigma": -1}, "n_sigma=-1"),
        ("greedy", {"temperature": 0.0}, "temperature=0.0"),
        ("top_k", {"alpha": 0.5}, "alpha=0.5"),
        ("top_p", {"top_p": "high"}, "top_p='high'"),
        ("locally_typical_distance", {"alpha": float("nan")}, "alpha=nan must be finite"),
        ("locally_typical", {"alpha": INF}, "selector.alpha=inf must be finite"),
        ("locally_typical_distance", {"mass": INF}, "selector.mass=inf must be finite"),
        ("top_n_sigma", {"n_sigma": INF}, "selector.n_sigma=inf must be finite"),
        ("top_p", {"temperature": INF}, "selector.temperature=inf must be finite"),
        ("min_p", {"min_p": -INF}, "selector.min_p=-inf must be finite"),
        ("nucleus", {}, "'nucleus'"),
    ],
)
def test_bad_parameters_raise_naming_key_and_value(method, params, key):
    with pytest.raises(ValueError, match=key) as error:
        make_selector(method, **params)
    assert method in str(error.value)


def test_logits_processor_masks_and_scales_like_the_mask():
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(3))
    sel = make_selector("locally_typical_distance", alpha=0.5, top_k=7, temperature=0.8)
    out = sel.logits_processor()(None, x)
    keep = sel.keep_mask(x)
    assert torch.equal(out > -INF, keep)
    torch.testing.assert_close(out[keep], x[keep] / 0.8)


def test_logits_processor_refuses_nan_logits():
    x = torch.randn(2, 10)
    x[1, 3] = math.nan
    with pytest.raises(FloatingPointError, match="NaN logits"):
        make_selector("top_k").logits_processor()(None, x)


@pytest.mark.parametrize("small_set", [256, 0], ids=["count", "sort"])
@pytest.mark.parametrize("name", sorted(SELECTORS))
@settings(max_examples=40, deadline=None)
@given(x=logits())
def test_diagnostics_match_a_sort_based_reference(name, small_set, x):
    """Both ways of ranking kept tokens (counting near the top, a sort for deep sets)."""
    sel = make_selector(name)
    keep = sel.keep_mask(x)
    with patch.object(harness.selectors, "RANK_BY_COUNTING", small_set):
        diag = sel.diagnose(x, keep)
    probs = x.softmax(-1)
    for row in range(x.shape[0]):
        kept = keep[row].nonzero().flatten().tolist()
        order = sorted(range(x.shape[1]), key=lambda i: -x[row, i].item())
        n = len(kept)
        assert diag.kept[row] == n
        torch.testing.assert_close(diag.mass[row], probs[row, kept].sum())
        top_n_values = sorted(x[row].tolist(), reverse=True)[:n]
        identical = sorted(x[row, kept].tolist(), reverse=True) == top_n_values and (
            n == x.shape[1] or top_n_values[-1] > sorted(x[row].tolist(), reverse=True)[n])
        assert bool(diag.topk_identical[row]) == identical
        if identical:
            assert diag.mean_rank[row] == pytest.approx((n - 1) / 2)
        else:  # position in probability order, ties by token id (a stable sort)
            positions = [order.index(i) for i in kept]
            assert diag.mean_rank[row] == pytest.approx(sum(positions) / n, abs=1e-4)


PARAMETERS = {  # a strategy per method for its parameters, temperature included
    "top_k": st.fixed_dictionaries({"top_k": st.integers(1, 60)}),
    "top_p": st.fixed_dictionaries({"top_p": st.floats(0.01, 1.0)}),
    "typical": st.fixed_dictionaries({"typical_p": st.floats(0.01, 0.99)}),
    "min_p": st.fixed_dictionaries({"min_p": st.floats(0.0, 1.0)}),
    "epsilon": st.fixed_dictionaries({"epsilon": st.floats(1e-5, 0.5)}),
    "eta": st.fixed_dictionaries({"eta": st.floats(1e-5, 0.5)}),
    "top_n_sigma": st.fixed_dictionaries({"n_sigma": st.floats(0.0, 3.0)}),
    "locally_typical": st.fixed_dictionaries({
        "alpha": st.sampled_from([0.0, 1.0]) | st.floats(0.0, 3.0),
        "top_k": st.none() | st.integers(1, 50), "mass": st.floats(0.05, 1.0)}),
    "locally_typical_distance": st.fixed_dictionaries({
        "alpha": st.floats(0.0, 3.0), "top_k": st.integers(1, 50),
        "mass": st.none() | st.floats(0.05, 1.0)}),
    "greedy": st.fixed_dictionaries({}),
    "ancestral": st.fixed_dictionaries({}),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(SELECTORS))
@settings(max_examples=40, deadline=None)
@given(data=st.data(), x=logits(), temperature=temperatures)
def test_tensor_values_keep_exactly_what_the_numbers_keep(name, data, x, temperature):
    """``with_tensor_values`` (what the compiled decode step reads: graph inputs, not
    constants) keeps the same tokens as the selector; refilled by ``load_values`` from another
    selector of the same ``structure``, it keeps what that one keeps."""
    first, second = (make_selector(name, **data.draw(PARAMETERS[name]), temperature=t)
                     for t in (temperature, data.draw(temperatures)))
    tensors = first.with_tensor_values()
    assert torch.equal(tensors.keep_mask(x), first.keep_mask(x))
    # the same fused multiply-adds (a vectorised kernel's scalar tail may round one ulp apart)
    torch.testing.assert_close(tensors.score(tensors.prepare(x)), first.score(first.prepare(x)),
                               rtol=1e-6, atol=1e-6)
    if second.structure() == first.structure():
        tensors.load_values(second)
        assert torch.equal(tensors.keep_mask(x), second.keep_mask(x))


def test_a_tensor_top_k_is_cut_from_a_topk_of_fixed_width():
    """Up to ``TOPK_WIDTH`` a top_k is a graph input (one structure for every value), cut from
    a topk of that width; above it, a Python constant (its own structure)."""
    x = torch.randn(3, 3000, generator=torch.Generator().manual_seed(5)).bfloat16().float()
    width = harness.selectors.TOPK_WIDTH
    for k in (1, 7, width - 1, width, width + 1, 2999, 3000):
        sel = make_selector("top_k", top_k=k)
        assert torch.equal(sel.with_tensor_values().keep_mask(x), sel.keep_mask(x)), k
        stays = (("top_k", k),) if k > width else ()
        assert sel.structure() == (type(sel), *stays)
