"""Diversity as SimCTG's evaluation defines it (Su et al. 2022), plus corpus-level distinct-n.

Texts split on whitespace. rep-n = 100 · (1 - Σ_texts unique n-grams / Σ_texts n-grams) for
n = 2, 3, 4; diversity = Π_n (1 - rep-n / 100). SimCTG's own script never counts the last n-gram
of a text: ``skip_last_ngram=True`` reproduces it for comparison with published tables.
distinct-n = unique n-grams across all texts / all n-grams, n = 1..4.
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def ngrams(words: list[str], n: int, skip_last: bool = False) -> list[tuple[str, ...]]:
    count = len(words) - n + (0 if skip_last else 1)
    return [tuple(words[i : i + n]) for i in range(max(count, 0))]


def diversity_metrics(texts: list[str], skip_last_ngram: bool = False) -> dict[str, float]:
    """``rep_2, rep_3, rep_4`` (percent), ``diversity`` and ``distinct_1..4`` (fractions).
    Values with nothing to count (no n-grams) are NaN."""
    split = [text.strip().split() for text in texts]
    out: dict[str, float] = {}
    diversity = 1.0
    for n in (2, 3, 4):
        unique = total = 0
        for words in split:
            grams = ngrams(words, n, skip_last_ngram)
            unique += len(set(grams))
            total += len(grams)
        out[f"rep_{n}"] = 100 * (1 - unique / total) if total else float("nan")
        diversity *= 1 - out[f"rep_{n}"] / 100
    out["diversity"] = diversity
    for n in (1, 2, 3, 4):
        corpus = Counter(g for words in split for g in ngrams(words, n))
        total = sum(corpus.values())
        out[f"distinct_{n}"] = len(corpus) / total if total else float("nan")
    return out


def ngram_counts(texts: list[str], skip_last_ngram: bool = False) -> np.ndarray:
    """``[len(texts), 6]``: per text, unique and total n-grams for n = 2, 3, 4 (u2, t2, u3, t3,
    u4, t4): the sufficient statistics of rep-n and diversity, which are ratios of their sums
    (1 - rep_n/100 = Σu/Σt; diversity = Π_n Σu_n/Σt_n), never means of per-text ratios."""
    out = np.zeros((len(texts), 6))
    for row, text in enumerate(texts):
        words = text.strip().split()
        for column, n in enumerate((2, 3, 4)):
            grams = ngrams(words, n, skip_last_ngram)
            out[row, 2 * column : 2 * column + 2] = len(set(grams)), len(grams)
    return out
