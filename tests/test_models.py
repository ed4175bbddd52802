"""Model sources that need no download."""

import torch

from harness.models import random_model, tiny_tokenizer


def test_tiny_tokenizer_round_trips_any_text_byte_for_byte():
    tokenizer = tiny_tokenizer()
    text = "Miss Woodhouse — “Emma” — ate 3½ crème brûlées.\n"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text.encode()) and tokenizer.decode(ids) == text


def test_random_llama3_8b_has_the_published_shape():
    model = random_model("random:llama3-8b", torch.device("meta"), torch.bfloat16)  # no memory
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248  # Llama-3-8B
    assert model.config.vocab_size == 128256
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored


def test_random_smollm2_has_the_published_shape():
    model = random_model("random:smollm2", torch.device("meta"), torch.float32)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M
    assert model.config.vocab_size == 49152 and model.config.tie_word_embeddings
