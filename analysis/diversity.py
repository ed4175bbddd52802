"""Diversity as SimCTG's evaluation defines it (Su et al. 2022), plus corpus-level distinct-n.

Texts split on whitespace. rep-n = 100 · (1 - Σ_texts unique n-grams / Σ_texts n-grams) for
n = 2, 3, 4; diversity = Π_n (1 - rep-n / 100). SimCTG's own script never counts the last n-gram
of a text: ``skip_last_ngram=True`` reproduces it for comparison with published tables.
distinct-n = unique n-grams across all texts / all n-grams, n = 1..4.

Every n-gram of every text is numbered once (``ngram_statistics``: integer ids with pandas'
``factorize``, for words, then for n-grams as (n-1-gram, word) pairs), and the per-text unique
counts and the corpus distinct counts are both read off those ids: one pass over the texts, no
Python set per text.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NGRAM_COLUMNS = ["u2", "t2", "u3", "t3", "u4", "t4"]


def ngrams(words: list[str], n: int, skip_last: bool = False) -> list[tuple[str, ...]]:
    count = len(words) - n + (0 if skip_last else 1)
    return [tuple(words[i : i + n]) for i in range(max(count, 0))]


def _distinct_per_text(text: np.ndarray, gram: np.ndarray, texts: int) -> np.ndarray:
    """How many different ``gram`` ids each text has (``text``: each gram's text index)."""
    size = int(gram.max(initial=0)) + 1
    return np.bincount(pd.unique(text * size + gram) // size, minlength=texts)


def ngram_statistics(texts: list[str], skip_last_ngram: bool = False,
                     ) -> tuple[np.ndarray, dict[str, float]]:
    """Per text, unique and total n-grams for n = 2, 3, 4 (``[len(texts), 6]``, columns
    ``NGRAM_COLUMNS``: the sufficient statistics of rep-n and diversity, which are ratios of
    their sums, never means of per-text ratios); and the texts' ``rep_2..4`` (percent),
    ``diversity`` and ``distinct_1..4`` (fractions), NaN where there is nothing to count."""
    split = [text.strip().split() for text in texts]
    lengths = np.array([len(words) for words in split], dtype=np.int64)
    ids = pd.factorize(np.array([w for ws in split for w in ws], dtype=object))[0].astype(
        np.int64)
    text_of = np.repeat(np.arange(len(texts)), lengths)
    position = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    counts = np.zeros((len(texts), 6))
    out: dict[str, float] = {}
    distinct = {1: (len(pd.unique(ids)), len(ids))}
    gram = ids  # the id of the n-gram starting at each word (valid where it fits in its text)
    for n in (2, 3, 4):
        begins = max(len(ids) - n + 1, 0)  # positions an n-gram can start at (any text)
        fits = position[:begins] <= lengths[text_of[:begins]] - n  # ... within its own text
        # the n-gram at i is the (n-1)-gram at i followed by word i + n - 1: id it by that pair
        pair = gram[:begins] * (len(ids) + 1) + ids[n - 1 :]
        gram = pd.factorize(pair)[0].astype(np.int64)
        starts, owners = gram[fits], text_of[:begins][fits]
        distinct[n] = (len(pd.unique(starts)), len(starts))
        if skip_last_ngram:  # SimCTG: the last n-gram of each text is not counted
            keep = np.ones(len(owners), bool)
            keep[:-1] = owners[:-1] == owners[1:]
            keep[-1:] = False
            starts, owners = starts[keep], owners[keep]
        counts[:, 2 * n - 4] = _distinct_per_text(owners, starts, len(texts))
        counts[:, 2 * n - 3] = np.bincount(owners, minlength=len(texts))
        unique, total = counts[:, 2 * n - 4].sum(), counts[:, 2 * n - 3].sum()
        out[f"rep_{n}"] = 100 * (1 - unique / total) if total else float("nan")
    out["diversity"] = float(np.prod([1 - out[f"rep_{n}"] / 100 for n in (2, 3, 4)]))
    for n, (unique, total) in distinct.items():
        out[f"distinct_{n}"] = unique / total if total else float("nan")
    return counts, out


def diversity_metrics(texts: list[str], skip_last_ngram: bool = False) -> dict[str, float]:
    """``rep_2, rep_3, rep_4`` (percent), ``diversity`` and ``distinct_1..4`` (fractions).
    Values with nothing to count (no n-grams) are NaN."""
    return ngram_statistics(texts, skip_last_ngram)[1]


def ngram_counts(texts: list[str], skip_last_ngram: bool = False) -> np.ndarray:
    """``[len(texts), 6]``: per text, unique and total n-grams for n = 2, 3, 4 (u2, t2, u3, t3,
    u4, t4)."""
    return ngram_statistics(texts, skip_last_ngram)[0]
