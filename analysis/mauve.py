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

log = logging.getLogger(__name__)


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
