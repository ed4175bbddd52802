"""Coherence of a continuation with its prompt, and its likelihood under a scorer LM.

- ``coherence``: cosine similarity of the embeddings of prompt and continuation (SimCSE-style,
  as in the Contrastive Decoding evaluation), with the same featurizers as MAUVE.
- ``coherence_ll``: mean log-likelihood per continuation token given the prompt under a scorer
  LM (Su & Collier 2022 use OPT-2.7B; default here the bundled SmolLM2), averaged over texts.
- ``perplexity``: exp of the mean negative log-likelihood over all continuation tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.features import disk_cached, featurize


@dataclass
class CoherenceConfig:
    """``metrics.coherence`` in ``conf/analysis.yaml``."""

    embedder: str = "minilm"  # minilm | lm:<model> | generator
    scorer: str = "bundled:smollm2"  # any model.source: bundled:smollm2, tiny, a folder, a name
    max_tokens: int = 256
    batch_size: int = 16
    dtype: str = "float32"  # the scorer's dtype (auto: bfloat16 on CUDA), part of the cache key


def embedding_coherence(prompts: list[str], continuations: list[str], cfg: CoherenceConfig,
                        generator: str | None = None) -> np.ndarray:
    """Cosine similarity per (prompt, continuation) pair."""
    a = featurize(prompts, cfg.embedder, cfg.max_tokens, generator)
    b = featurize(continuations, cfg.embedder, cfg.max_tokens, generator)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, 1e-12)


def token_log_likelihoods(prompts: list[str], continuations: list[str],
                          cfg: CoherenceConfig) -> np.ndarray:
    """``[n, 2]``: summed log-likelihood of each continuation's tokens given its prompt, and
    the number of those tokens (0 for an empty continuation)."""
    def compute() -> np.ndarray:
        import torch  # not needed when the likelihoods are cached (see analysis.features)

        from harness.models import ModelConfig, load_model

        loaded = load_model(ModelConfig(name=cfg.scorer, source=cfg.scorer, dtype=cfg.dtype))
        tok, model = loaded.tokenizer, loaded.model
        out = []
        for start in range(0, len(prompts), cfg.batch_size):
            heads = tok(prompts[start : start + cfg.batch_size], add_special_tokens=False).input_ids
            tails = tok(continuations[start : start + cfg.batch_size],
                        add_special_tokens=False).input_ids
            tails = [t[: cfg.max_tokens] for t in tails]
            width = max(len(h) + len(t) for h, t in zip(heads, tails, strict=True))
            ids = torch.full((len(heads), width), tok.pad_token_id)
            scored = torch.zeros((len(heads), width), dtype=torch.bool)
            for row, (h, t) in enumerate(zip(heads, tails, strict=True)):
                ids[row, : len(h) + len(t)] = torch.tensor(h + t)
                scored[row, len(h) : len(h) + len(t)] = True
            attention = (torch.arange(width)[None] < torch.tensor(
                [len(h) + len(t) for h, t in zip(heads, tails, strict=True)])[:, None]).long()
            with torch.inference_mode():
                logits = model(input_ids=ids.to(model.device),
                               attention_mask=attention.to(model.device)).logits.float().cpu()
            logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
            mask = scored[:, 1:]
            out += [[float((logp[r] * mask[r]).sum()), int(mask[r].sum())]
                    for r in range(len(heads))]
        return np.array(out, dtype=np.float64).reshape(-1, 2)

    return disk_cached("loglik", [cfg.scorer, cfg.max_tokens, scorer_dtype(cfg.dtype), prompts,
                                  continuations], compute)


def scorer_dtype(dtype: str) -> str:
    """The dtype the scorer computes in: ``auto`` resolved as ``harness.models`` resolves it
    (which needs torch; the explicit default does not)."""
    if dtype != "auto":
        return dtype
    from harness.models import resolve_device, resolve_dtype

    return str(resolve_dtype(dtype, resolve_device("auto"))).removeprefix("torch.")


def likelihood_metrics(log_likelihoods: np.ndarray) -> dict[str, float]:
    total, count = log_likelihoods[:, 0], log_likelihoods[:, 1]
    scored = count > 0
    if not scored.any():
        return {"coherence_ll": float("nan"), "perplexity": float("nan")}
    return {"coherence_ll": float(np.mean(total[scored] / count[scored])),
            "perplexity": float(np.exp(-total.sum() / count.sum()))}
