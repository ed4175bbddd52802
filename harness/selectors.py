"""Selectors: which next tokens may be sampled.

A selector turns next-token logits ``[batch, vocab]`` into a boolean keep-mask of the same
shape. Each one is a ranking **score** (lower is better; ``inf`` never kept) plus a **cut**
(the best ``top_k``; the smallest best-first prefix holding ``mass``; a probability threshold).
All math runs in float32 on the temperature-scaled logits, whatever the input dtype; rows of
a batch are independent; tokens with logit ``-inf`` are never kept and at least one token is.

    >>> sel = make_selector("locally_typical_distance", alpha=0.7, top_k=10)
    >>> keep = sel.keep_mask(logits)          # bool [batch, vocab]
    >>> proc = sel.logits_processor()         # transformers LogitsProcessor

The standard methods reproduce transformers' warpers (``min_tokens_to_keep=1``) token for
token, including how each breaks ties at its cut. This module knows nothing of models,
configs or files.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import LogitsProcessor

NEG_INF = float("-inf")
RANK_BY_COUNTING = 256  # diagnostics rank this many top tokens by counting, more by a sort
# A top_k given as a tensor (``Selector.with_tensor_values``) is cut from a topk of this width,
# so one compiled graph serves every top_k up to it; a larger top_k stays a Python constant.
TOPK_WIDTH = 1024


def entropy(logp: Tensor) -> Tensor:
    """H = -Σ p·log p per row (nats), ``[batch, 1]``; ``-inf`` log-probs contribute 0.
    The same float ops as ``TypicalLogitsWarper``, with one large temporary instead of two."""
    return -logp.exp().mul_(logp).nansum(-1, keepdim=True)


def keep_best_k(score: Tensor, k: int | Tensor) -> Tensor:
    """Keep the ``k`` lowest scores; ties with the k-th are kept (as ``TopKLogitsWarper``).
    ``k`` a 0-d tensor (at most ``TOPK_WIDTH``): the k-th of a ``TOPK_WIDTH``-wide topk, the
    same value as a topk of width k."""
    if isinstance(k, Tensor):
        width = min(TOPK_WIDTH, score.shape[-1])
        best = score.topk(width, dim=-1, largest=False).values
        index = (k.long() - 1).clamp(max=width - 1).expand(*score.shape[:-1], 1)
        return score <= best.gather(-1, index)
    kth = score.topk(min(k, score.shape[-1]), dim=-1, largest=False).values[..., -1:]
    return score <= kth


def keep_best_mass(score: Tensor, logits: Tensor, mass: float) -> Tensor:
    """Keep the smallest best-first prefix whose probability reaches ``mass``; ties with the
    last token of the prefix are kept (the cut of ``TypicalLogitsWarper``)."""
    sorted_score, order = score.sort(dim=-1)
    cumulative = logits.gather(-1, order).softmax(-1).cumsum(-1)
    last = (cumulative < mass).sum(-1, keepdim=True).clamp_(max=score.shape[-1] - 1)
    return score <= sorted_score.gather(-1, last)


def _check(method: str, name: str, value: object, ok: bool, allowed: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # inf passed range checks
        raise ValueError(
            f"{method}: selector.{name}={value!r} must be finite; {name} must be {allowed}.")
    if not ok:
        raise ValueError(
            f"{method}: parameter {name}={value!r} is out of range; {name} must be {allowed}."
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


@dataclass(frozen=True)
class StepDiagnostics:
    """What a selector kept at one decoding step, one entry per row (tensors of shape [batch]).

    ``mean_rank`` is the mean 0-based position of the kept tokens in probability order, ties
    in token-id order (a top-k set of size n has (n-1)/2); ``topk_identical`` says the kept
    set is exactly the n most probable tokens (every token at least as probable as a kept one
    is kept).
    """

    kept: Tensor
    mass: Tensor
    mean_rank: Tensor
    topk_identical: Tensor


class Selector:
    """Base class: a ranking ``score`` plus a ``cut``; subclasses set ``name`` and override them."""

    name: str = ""
    # Its kept set is always its n most probable tokens (a threshold on probability), up to
    # ties: diagnostics rank by counting within the top tokens, never by a sort.
    keeps_most_probable: bool = True
    # The numbers its math reads (attributes): what ``with_tensor_values`` turns into tensors.
    values: tuple[str, ...] = ("temperature",)

    def __init__(self, temperature: float = 1.0) -> None:
        _check(self.name, "temperature", temperature,
               _is_number(temperature) and temperature > 0, "a float > 0")
        self.temperature = float(temperature)

    @property
    def params(self) -> dict[str, object]:
        """The method's parameters as passed to ``make_selector`` (defaults filled in)."""
        return {n: getattr(self, n) for n in parameter_names(type(self))}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"make_selector({self.name!r}, {args})"

    def prepare(self, logits: Tensor) -> Tensor:
        """Float32 logits divided by the temperature: what every selector ranks and cuts."""
        logits = logits.float()
        if isinstance(self.temperature, Tensor) or self.temperature != 1.0:
            return logits / self.temperature
        return logits

    def with_tensor_values(self, device: torch.device | str = "cpu") -> Selector:
        """A copy whose ``values`` are 0-d float32 tensors on ``device`` (``load_values`` refills
        them in place): a compiled step that reads them takes them as graph inputs, where it
        would specialise on a Python number (one compilation per value). It computes what this
        selector computes: a float32 tensor enters each kernel as the Python number does (cast
        to float32). A missing value (``None``) or a top_k above ``TOPK_WIDTH`` stays as is: it
        is part of the ``structure``."""
        copied = copy.copy(self)
        for name in self.values:
            if not self._stays_python(name):
                setattr(copied, name, torch.tensor(float(getattr(self, name)),
                                                   dtype=torch.float32, device=device))
        return copied

    def _stays_python(self, name: str) -> bool:
        value = getattr(self, name)
        return value is None or (name == "top_k" and value > TOPK_WIDTH)

    def structure(self) -> tuple:
        """What a compiled step specialises on (``with_tensor_values``): the method and its
        values that stay Python objects."""
        return (type(self), *((name, getattr(self, name)) for name in self.values
                              if self._stays_python(name)))

    def load_values(self, source: Selector) -> None:
        """Refill this ``with_tensor_values`` copy with ``source``'s values (same structure)."""
        for name in self.values:
            value = getattr(self, name)
            if isinstance(value, Tensor):
                value.fill_(float(getattr(source, name)))

    def score(self, logits: Tensor) -> Tensor:
        """Ranking score, lower is better. Default: by probability."""
        return -logits

    def cut(self, score: Tensor, logits: Tensor) -> Tensor:
        raise NotImplementedError

    def keep_mask(self, logits: Tensor) -> Tensor:
        """Bool ``[batch, vocab]``: True where the token may be sampled."""
        return self.select(self.prepare(logits))

    def select(self, prepared: Tensor) -> Tensor:
        """``keep_mask`` of logits that already went through ``prepare``."""
        return self.cut(self.score(prepared), prepared) & (prepared > NEG_INF)

    def logits_processor(self, record: bool = False) -> SelectorLogitsProcessor:
        """A transformers ``LogitsProcessor``: non-kept logits become ``-inf``, kept ones are
        the temperature-scaled logits. ``record=True`` keeps a ``StepDiagnostics`` per step."""
        return SelectorLogitsProcessor(self, record=record)

    def diagnose(self, logits: Tensor, keep: Tensor) -> StepDiagnostics:
        """Diagnostics of ``keep`` (from ``keep_mask(logits)``), vectorised over the batch."""
        return diagnose_prepared(self.prepare(logits), keep)


def diagnose_prepared(logits: Tensor, keep: Tensor, ranking: str = "auto") -> StepDiagnostics:
    """``Selector.diagnose`` on logits that already went through ``Selector.prepare``.

    A row whose kept set is its ``kept`` most probable tokens has mean rank (kept - 1) / 2; any
    other row's ranks are counted. ``ranking`` says how, each exact: ``"count"`` within the top
    ``RANK_BY_COUNTING`` tokens (exact while the least probable kept token lies there),
    ``"sort"`` by a full sort, ``"auto"`` the cheaper of the two for this batch, which reads the
    batch on the host: ``"count"`` and ``"sort"`` never do (``harness.decode``'s compiled step).
    """
    kept = keep.sum(-1)
    mass = (logits.softmax(-1) * keep).sum(-1)
    least_kept = logits.masked_fill(~keep, math.inf).amin(-1, keepdim=True)
    at_least_as_probable = (logits >= least_kept).sum(-1)
    topk_identical = at_least_as_probable == kept
    depth = min(RANK_BY_COUNTING, logits.shape[-1])
    if ranking == "auto":
        if bool(topk_identical.all()):
            ranking = "none"
        elif (depth := int(at_least_as_probable.max())) <= RANK_BY_COUNTING:
            ranking = "count"
        else:
            ranking = "sort"
    if ranking == "none":
        rank_sum = torch.zeros_like(kept)
    elif ranking == "count":
        # Ranking needs only the tokens at least as probable as the least probable kept one
        # (a few dozen for the locally typical methods): one topk, then count within it.
        values, index = logits.topk(depth, dim=-1)
        ahead = (values[:, None, :] > values[:, :, None]) | (
            (values[:, None, :] == values[:, :, None]) & (index[:, None, :] < index[:, :, None]))
        rank_sum = (ahead.sum(-1) * keep.gather(-1, index)).sum(-1)
    elif ranking == "sort":
        order = logits.sort(dim=-1, descending=True, stable=True).indices
        positions = torch.arange(logits.shape[-1], device=logits.device)
        rank_sum = (keep.gather(-1, order) * positions).sum(-1)
    else:
        raise ValueError(f"ranking={ranking!r}; use auto, count or sort.")
    # Row by row, so a row's value never depends on the other rows of its batch.
    mean_rank = torch.where(topk_identical, (kept - 1) / 2, rank_sum / kept)
    return StepDiagnostics(kept, mass, mean_rank.float(), topk_identical)


def check_no_nan(logits: Tensor, position: int, methods: str) -> None:
    """Refuse NaN logits (max propagates NaN: one pass, no temporary)."""
    if logits.amax().isnan():
        raise nan_error(position, methods)


def nan_error(position: int, methods: str) -> FloatingPointError:
    return FloatingPointError(
        f"the model produced NaN logits at generated position {position} ({methods}); "
        "nothing is sampled from NaN. Run the model in float32 (model.dtype=float32) or "
        "check its weights."
    )


class SelectorLogitsProcessor(LogitsProcessor):
    """Adapts a ``Selector`` to ``model.generate(logits_processor=[...])``."""

    def __init__(self, selector: Selector, record: bool = False) -> None:
        self.selector = selector
        self.record = record
        self.steps: list[StepDiagnostics] = []
        self.calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: Tensor) -> Tensor:
        self.calls += 1
        logits = self.selector.prepare(scores)
        check_no_nan(logits, self.calls, self.selector.name)
        keep = self.selector.select(logits)
        if self.record:
            self.steps.append(diagnose_prepared(logits, keep))
        return logits.where(keep, NEG_INF)


SELECTORS: dict[str, type[Selector]] = {}


def register(cls: type[Selector]) -> type[Selector]:
    SELECTORS[cls.name] = cls
    return cls


def parameter_names(cls: type[Selector]) -> list[str]:
    """What a method takes: its class's constructor arguments."""
    return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]


def make_selector(name: str, **params: object) -> Selector:
    """The selector ``name`` with ``params``; unknown methods or parameters raise ValueError."""
    if name not in SELECTORS:
        raise ValueError(
            f"unknown selector method {name!r}; choose one of: {', '.join(sorted(SELECTORS))}."
        )
    cls = SELECTORS[name]
    allowed = parameter_names(cls)
    for key, value in params.items():
        if key not in allowed:
            raise ValueError(
                f"{name}: it does not take parameter {key}={value!r}; "
                f"its parameters are: {', '.join(allowed)}."
            )
    return cls(**params)


@register
class Greedy(Selector):
    """Keep the single most probable token (the first one on ties, as ``argmax``)."""

    name = "greedy"

    def cut(self, score: Tensor, logits: Tensor) -> Tensor:
        best = score.argmin(-1, keepdim=True)
        return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, best, True)


@register
class Ancestral(Selector):
    """Keep every token: pure sampling from the (temperature-scaled) softmax."""

    name = "ancestral"

    def cut(self, score: Tensor, logits: Tensor) -> Tensor:
        return torch.ones_like(score, dtype=torch.bool)


@register
class TopK(Selector):
    """Keep the ``top_k`` most probable tokens (ties with the k-th kept), as ``TopKLogitsWarper``.

    This is what the design notes call "top_p": the top_k most probable tokens, no mass cut.
    """

    name = "top_k"
    values = ("temperature", "top_k")

    def __init__(self, top_k: int = 10, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        _check(self.name, "top_k", top_k, _is_int(top_k) and top_k >= 1, "an integer >= 1")
        self.top_k = top_k

    def cut(self, score: Tensor, logits: Tensor) -> Tensor:
        return keep_best_k(score, self.top_k)


@register
class TopP(Selector):
    """Nucleus sampling: the smallest set of most probable tokens with mass >= ``top_p``.

    As ``TopPLogitsWarper``: sort ascending, drop tokens while the cumulative mass from the
    least probable end is <= 1 - top_p (ties broken by sort position), keep the best one.
    """

    name = "top_p"
    keeps_most_probable = False  # ties at the cut are split by sort position
    values = ("temperature", "tail")

    def __init__(self, top_p: float = 0.95, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        _check(self.name, "top_p", top_p, _is_number(top_p) and 0 < top_p <= 1, "a float in (0, 1]")
        self.top_p = float(top_p)
        self.tail = 1 - self.top_p  # in float64, as the warper's Python arithmetic

    def cut(self, score: Tensor, logits: Tensor) -> Tensor:
        ascending, order = logits.sort(dim=-1)
        drop = ascending.softmax(-1).cumsum(-1) <= self.tail
        drop[..., -1:] = False
        return ~drop.scatter(-1, order, drop)


@register
class Typical(Selector):
    """Locally typical sampling (Meier et al. 2022), as ``TypicalLogitsWarper``.

    Score d = |-log p - H|; keep the smallest best-first prefix with mass >= ``typical_p``.
    """

    name = "typical"
    keeps_most_probable = False
    values = ("temperature", "typical_p")

    def __init__(self, typical_p: float = 0.95, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        _check(self.name, "typical_p", typical_p, _is_number(typical_p) and 0 < typical_p < 1,
               "a float in (0, 1)")
        self.typical_p = float(typical_p)

    def score(self, logits: Tensor) -> Tensor:
        logp = logits.log_softmax(-1)
        return (-logp - entropy(logp)).abs()

    def cut(self, score: Tensor, logits: Tensor) -> Tensor:
        return keep_best_mass(score, logits, self.typical_p)


class _ProbabilityThreshold(Selector):
    """Keep tokens with probability >= ``threshold(probs, logits)``, and the most probable ones."""

    def threshold(self, probs: Tensor, logits: Tensor) -> Tensor | float:
        raise NotImplementedError

    def cut(self, score: Tensor, logits: Tensor) -> Tensor:
        probs = logits.softmax(-1)
        return (probs >= self.threshold(probs, logits)) | (logits >= logits.amax(-1, keepdim=True))


@register
class MinP(_ProbabilityThreshold):
    """Keep tokens with p >= ``min_p`` · p_max (Nguyen et al. 2024), as ``MinPLogitsWarper``."""

    name = "min_p"
    values = ("temperature", "min_p")

    def __init__(self, min_p: float = 0.1, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        _check(self.name, "min_p", min_p, _is_number(min_p) and 0 <= min_p <= 1,
               "a float in [0, 1]")
        self.min_p = float(min_p)

    def threshold(self, probs: Tensor, logits: Tensor) -> Tensor:
        return self.min_p * probs.amax(-1, keepdim=True)


@register
class Epsilon(_ProbabilityThreshold):
    """Keep tokens with p >= ``epsilon`` (Hewitt et al. 2022), as ``EpsilonLogitsWarper``."""

    name = "epsilon"
    values = ("temperature", "epsilon")

    def __init__(self, epsilon: float = 3e-4, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        _check(self.name, "epsilon", epsilon, _is_number(epsilon) and 0 < epsilon < 1,
               "a float in (0, 1)")
        self.epsilon = float(epsilon)

    def threshold(self, probs: Tensor, logits: Tensor) -> float:
        return self.epsilon


@register
class Eta(_ProbabilityThreshold):
    """Keep p >= min(eta, sqrt(eta)·exp(-H)) (Hewitt et al. 2022), as ``EtaLogitsWarper``."""

    name = "eta"
    values = ("temperature", "eta")

    def __init__(self, eta: float = 3e-4, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        _check(self.name, "eta", eta, _is_number(eta) and 0 < eta < 1, "a float in (0, 1)")
        self.eta = float(eta)

    def threshold(self, probs: Tensor, logits: Tensor) -> Tensor:
        h = torch.distributions.Categorical(logits=logits, validate_args=False).entropy()
        h = h[..., None]
        eta = torch.as_tensor(self.eta, dtype=torch.float32, device=logits.device)
        return torch.min(eta, torch.sqrt(eta) * torch.exp(-h))


@register
class TopNSigma(Selector):
    """Top-nσ (Tang et al. 2024): keep logits >= max - ``n_sigma``·σ, with σ the (unbiased)
    standard deviation of the row's finite logits."""

    name = "top_n_sigma"
    values = ("temperature", "n_sigma")

    def __init__(self, n_sigma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        _check(self.name, "n_sigma", n_sigma, _is_number(n_sigma) and n_sigma >= 0, "a float >= 0")
        self.n_sigma = float(n_sigma)

    def cut(self, score: Tensor, logits: Tensor) -> Tensor:
        finite = logits > NEG_INF
        count = finite.sum(-1, keepdim=True)
        values = logits.where(finite, 0.0)
        mean = values.sum(-1, keepdim=True) / count
        var = ((values - mean).where(finite, 0.0) ** 2).sum(-1, keepdim=True) / (count - 1)
        sigma = var.sqrt().nan_to_num(0.0)
        return logits >= logits.amax(-1, keepdim=True) - self.n_sigma * sigma


class _Distance(Selector):
    """A distance d ranks the tokens; keep the best ``top_k`` and, if ``mass`` is set, no more
    than the smallest best-first prefix holding that mass (both: the shorter prefix)."""

    keeps_most_probable = False
    values = ("temperature", "alpha", "top_k", "mass")

    def __init__(self, alpha: float, top_k: int | None, mass: float | None,
                 temperature: float) -> None:
        super().__init__(temperature)
        _check(self.name, "alpha", alpha, _is_number(alpha) and alpha >= 0,
               "a float >= 0")
        _check(self.name, "top_k", top_k, top_k is None or (_is_int(top_k) and top_k >= 1),
               "an integer >= 1 (or null with mass set)")
        _check(self.name, "mass", mass, mass is None or (_is_number(mass) and 0 < mass <= 1),
               "a float in (0, 1] or null")
        if top_k is None and mass is None:
            raise ValueError(f"{self.name}: top_k and mass are both null; set at least one.")
        self.alpha, self.top_k, self.mass = float(alpha), top_k, mass

    def distance(self, logp: Tensor, h: Tensor) -> Tensor:
        """d from log-probabilities (s = -logp) and entropies ``[batch, 1]``; ``inf`` where
        p = 0. Written in place on ``logp``: each pass over the vocabulary costs."""
        raise NotImplementedError

    def score(self, logits: Tensor) -> Tensor:
        logp = logits.log_softmax(-1)
        return self.distance(logp, entropy(logp))

    def cut(self, score: Tensor, logits: Tensor) -> Tensor:
        keep = keep_best_k(score, self.top_k) if self.top_k is not None else True
        return keep & keep_best_mass(score, logits, self.mass) if self.mass is not None else keep


@register
class LocallyTypical(_Distance):
    """Additive bias: d = |s - H| + alpha·s, with s = -log p and H the entropy (nats).

    alpha = 0 is pure local typicality; alpha grows the preference for probable tokens. For
    alpha > 1, d is strictly increasing in s, so every alpha > 1 selects exactly top-k by
    probability; at alpha = 1 all tokens with s < H tie at d = H.
    """

    name = "locally_typical"
    values = ("temperature", "alpha32", "top_k", "mass")

    def __init__(self, alpha: float = 0.0, top_k: int | None = 10, mass: float | None = None,
                 temperature: float = 1.0) -> None:
        super().__init__(alpha, top_k, mass, temperature)
        self.alpha32 = float(torch.tensor(self.alpha, dtype=torch.float32))
        if self.alpha > 1:
            warnings.warn(
                f"locally_typical with alpha={alpha} > 1 is degenerate: it selects exactly the "
                "top_k most probable tokens, the same as method top_k.", stacklevel=3)

    def distance(self, logp: Tensor, h: Tensor) -> Tensor:
        d = (logp + h).abs_()  # |s - H|
        alpha = self.alpha32  # as the kernel sees it (logp is float32)
        if isinstance(alpha, Tensor):  # addcmul: the same fused multiply-add as add's alpha
            return torch.where(alpha == 0, d, torch.addcmul(d, logp, -alpha))
        return d.add_(logp, alpha=-alpha) if alpha else d  # + alpha·s (0·inf would be NaN)


@register
class LocallyTypicalDistance(_Distance):
    """Entropy scaling: d = |s - alpha·H|, with s = -log p and H the entropy (nats).

    alpha = 1 is pure local typicality; alpha ("tau") < 1 favours probable tokens. Whenever
    alpha·H <= -log p_max the selection is exactly top-k by probability; alpha = 0 always is.
    """

    name = "locally_typical_distance"

    def __init__(self, alpha: float = 1.0, top_k: int | None = 10, mass: float | None = None,
                 temperature: float = 1.0) -> None:
        super().__init__(alpha, top_k, mass, temperature)

    def distance(self, logp: Tensor, h: Tensor) -> Tensor:
        # alpha·H per row first: a tensor alpha (``with_tensor_values``) cannot be add's alpha
        return logp.add_(h * self.alpha).abs_()  # |s - alpha·H|
