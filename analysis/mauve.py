"""MAUVE (Pillutla et al. 2021) through the mauve-text package, on precomputed features.

Human references are p, generations q. k-means is run with several seeds (default 5) and
reported as mean and std; under 500 samples MAUVE is biased upward and noisy, and the table
says so. BLAS/OpenMP threads are limited to one inside the computation: with more they fight
k-means and make it 10-100x slower.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from analysis.stats import permutation_p

log = logging.getLogger(__name__)


CHUNK = 1 << 21  # labels per chunk of swap-test replicates (16 MB of int64 or float64)


@dataclass
class MauveConfig:
    """``metrics.mauve`` in ``conf/analysis.yaml``."""

    featurizer: str = "minilm"  # minilm | lm:<model> | generator
    max_tokens: int = 256  # texts are truncated to this many featurizer tokens, both sides
    kmeans_seeds: int = 5
    num_buckets: str = "auto"  # mauve-text default: number of samples / 10
    scaling_factor: float = 5.0  # mauve-text default
    min_samples: int = 500  # below this the table flags the value as noisy


@contextmanager
def faiss_warnings_silenced() -> Iterator[None]:
    """faiss warns on stderr, from C++, for every k-means run on few points (always true below
    ~40 points per cluster); the table already flags small samples, so those lines go."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def mauve_scores(p_features: np.ndarray, q_features: np.ndarray, cfg: MauveConfig) -> list[float]:
    """MAUVE of q against p, once per k-means seed."""
    import mauve

    buckets = cfg.num_buckets if cfg.num_buckets == "auto" else int(cfg.num_buckets)
    with threadpool_limits(limits=1), faiss_warnings_silenced():
        return [float(mauve.compute_mauve(p_features=p_features, q_features=q_features,
                                          num_buckets=buckets, seed=seed, verbose=False,
                                          mauve_scaling_factor=cfg.scaling_factor).mauve)
                for seed in range(cfg.kmeans_seeds)]


def quantize(features: np.ndarray, buckets: int, seed: int) -> np.ndarray:
    """A k-means label per row, by mauve-text's own recipe (l2 norm, PCA to 90% of the
    variance, faiss k-means with 5 restarts and 500 iterations, seeded as it seeds)."""
    import faiss
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    data = normalize(features, norm="l2", axis=1)
    pca = PCA(n_components=None, whiten=False, random_state=seed + 1).fit(data)
    keep = int(np.argmax(np.cumsum(pca.explained_variance_ratio_) >= 0.9)) + 1
    data = pca.transform(data)[:, :keep].astype(np.float32)
    kmeans = faiss.Kmeans(data.shape[1], buckets, niter=500, nredo=5, update_index=True,
                          seed=seed + 2, verbose=False)
    kmeans.train(data)
    return kmeans.index.search(data, 1)[1].reshape(-1)


def mauve_of_histograms(p: np.ndarray, q: np.ndarray, scaling_factor: float,
                        points: int = 25) -> np.ndarray:
    """MAUVE of histograms ``q [..., K]`` against ``p [K]`` (mauve-text's divergence curve and
    area, vectorised over the leading axes)."""
    weights = np.linspace(1e-6, 1 - 1e-6, points)[:, None]
    q = q[..., None, :]
    r = weights * p + (1 - weights) * q

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log(a / b), 0.0)
        return terms.sum(-1)

    x = np.exp(-scaling_factor * kl(q, r))
    y = np.exp(-scaling_factor * np.broadcast_to(kl(p, r), x.shape))
    shape = (*x.shape[:-1], 1)
    x = np.concatenate([np.ones(shape), x, np.zeros(shape)], -1)  # exp(-c·0), exp(-c·inf)
    y = np.concatenate([np.zeros(shape), y, np.ones(shape)], -1)

    def area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        order = np.argsort(a, axis=-1, kind="stable")
        a, b = np.take_along_axis(a, order, -1), np.take_along_axis(b, order, -1)
        return np.trapezoid(b, a, axis=-1)

    return 0.5 * (area(x, y) + area(y, x))


def mauve_swap_test(human: np.ndarray, base: np.ndarray, method: np.ndarray,
                    prompt_of_text: np.ndarray, cfg: MauveConfig, flips: np.ndarray,
                    ) -> tuple[float, float]:
    """Δ MAUVE (method - baseline) and its paired swap-test p-value
    (``mauve_swap_null``)."""
    delta, null = mauve_swap_null(human, base, method, prompt_of_text, cfg, flips)
    return delta, permutation_p(null, delta)


def mauve_swap_null(human: np.ndarray, base: np.ndarray, method: np.ndarray,
                    prompt_of_text: np.ndarray, cfg: MauveConfig, flips: np.ndarray,
                    ) -> tuple[float, np.ndarray]:
    """Δ MAUVE (method - baseline) and its swap-test null replicates ``[B]``. One k-means
    codebook per k-means seed is fit on human ∪ baseline ∪ method features; each replicate
    swaps the two configurations' labels of the prompts ``flips [B, prompts]`` marks and
    recomputes both MAUVEs from histograms only. Δ and the null are averaged over the k-means
    seeds. Rows of ``base`` and ``method`` are the same (prompt, seed) texts in the same order."""
    n = len(base)
    buckets = max(2, round(min(len(human), n) / 10)) if cfg.num_buckets == "auto" else int(
        cfg.num_buckets)
    # Replicates go in chunks of about CHUNK labels (or divergence-curve points), so memory
    # does not grow with B.
    chunk = max(1, CHUNK // max(n, 25 * buckets))
    deltas, nulls = [], []
    with threadpool_limits(limits=1), faiss_warnings_silenced():
        for seed in range(cfg.kmeans_seeds):
            labels = quantize(np.vstack([human, base, method]), buckets, seed)
            h, b, m = labels[: len(human)], labels[len(human) : len(human) + n], labels[-n:]
            p = np.bincount(h, minlength=buckets) / len(h)

            def hist(lab: np.ndarray) -> np.ndarray:
                rows = np.arange(lab.shape[0])[:, None] * buckets
                counts = np.bincount((lab + rows).ravel(), minlength=lab.shape[0] * buckets)
                return counts.reshape(lab.shape[0], buckets) / lab.shape[1]

            observed = mauve_of_histograms(p, hist(np.vstack([m, b])), cfg.scaling_factor)
            deltas.append(observed[0] - observed[1])
            null = np.empty(len(flips))
            for start in range(0, len(flips), chunk):
                swap = flips[start : start + chunk, prompt_of_text].astype(bool)  # [chunk, n]
                null[start : start + chunk] = (
                    mauve_of_histograms(p, hist(np.where(swap, b, m)), cfg.scaling_factor)
                    - mauve_of_histograms(p, hist(np.where(swap, m, b)), cfg.scaling_factor))
            nulls.append(null)
    return float(np.mean(deltas)), np.mean(nulls, axis=0)
