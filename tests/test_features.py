"""Featurizer embeddings of a text do not depend on its batch-mates (left padding with
position ids), for an absolute-position model (GPT-2's shape) and a rotary one (Llama's,
SmolLM2's family); random tiny models built here, nothing downloaded."""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from analysis.features import last_token_states
from harness.models import tiny_model, tiny_tokenizer

TEXTS = ["A short one.", "A somewhat longer text, with more bytes in it than the first.",
         "Mid-length text here."]


def gpt2_shaped(vocab_size: int):
    config = GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=4,
                        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                        bos_token_id=None)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_a_texts_features_are_the_same_alone_and_in_any_batch(shape):
    tokenizer = tiny_tokenizer()
    model = gpt2_shaped(len(tokenizer)) if shape == "gpt2" else tiny_model(len(tokenizer)).eval()
    alone = np.vstack([last_token_states(model, tokenizer, [t], 64, 1) for t in TEXTS])
    together = last_token_states(model, tokenizer, TEXTS, 64, 3)
    reordered = last_token_states(model, tokenizer, TEXTS[::-1], 64, 2)[::-1]
    scale = np.linalg.norm(alone, axis=1).mean()
    assert scale > 1  # not a degenerate all-zero feature
    np.testing.assert_allclose(together, alone, atol=1e-4 * scale)
    np.testing.assert_allclose(reordered, alone, atol=1e-4 * scale)
