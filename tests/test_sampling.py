"""Keyed sampling: exact categorical draws, noise that depends on (seed, prompt, step, token)
alone, and coupling between configurations."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from harness.data import DatasetConfig, load_prompts
from harness.models import ModelConfig, load_model
from harness.sampling import (
    KeyedSampler,
    diagnose_groups,
    perturb,
    row_keys,
    step_keys,
    uniforms,
)
from harness.selectors import make_selector


def sample(selector_name: str, logits: torch.Tensor, seeds: torch.Tensor, prompt_ids,
           step: int = 0, **params) -> torch.Tensor:
    selector = make_selector(selector_name, **params)
    keys = row_keys(seeds, torch.as_tensor(prompt_ids).expand_as(seeds))
    sampler = KeyedSampler([(selector, slice(0, len(seeds)))], keys, prompt_length=0)
    return sampler(torch.zeros(len(seeds), step, dtype=torch.long), logits).argmax(-1)


def test_uniforms_are_strictly_inside_0_1_in_float32():
    keys = torch.arange(200_000, dtype=torch.int64) * 7919
    u = uniforms(keys, torch.arange(len(keys)))
    assert float(u.min()) > 0 and float(u.max()) < 1
    top = (((1 << 23) - 1) + 0.5) * 2.0**-23  # the largest value the 23 bits can give
    assert torch.tensor(top, dtype=torch.float32).item() < 1.0


def test_uniforms_look_uniform_and_independent_across_tokens():
    keys = step_keys(row_keys(torch.tensor([3]), torch.tensor([11])), 5)
    u = uniforms(keys[:, None], torch.arange(100_000)[None]).flatten().numpy()
    counts, _ = np.histogram(u, bins=50, range=(0, 1))
    assert chisquare(counts).pvalue > 1e-3
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02


def test_noise_depends_on_seed_prompt_and_step_only():
    logits = torch.randn(6, 300)
    keep = torch.ones_like(logits, dtype=torch.bool)
    seeds, prompts = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([5, 6, 5, 6, 5, 6])
    keys = step_keys(row_keys(seeds, prompts), 3)
    whole = perturb(logits, keep, keys)
    for order in (torch.tensor([5, 3, 1, 0, 2, 4]), torch.tensor([2])):
        part = perturb(logits[order], keep[order], keys[order])
        assert torch.equal(part, whole[order])
    assert not torch.equal(perturb(logits, keep, step_keys(row_keys(seeds, prompts), 4)), whole)


def test_the_sparse_and_dense_paths_give_the_same_noise():
    logits = torch.randn(5, 4000)
    keys = step_keys(row_keys(torch.arange(5), torch.arange(5)), 0)
    few = torch.zeros_like(logits, dtype=torch.bool)
    few[:, :7] = True
    many = torch.ones_like(few)
    assert torch.equal(perturb(logits, few, keys)[:, :7], perturb(logits, many, keys)[:, :7])


@pytest.fixture(scope="module")
def first_step_logits():
    loaded = load_model(ModelConfig(source="tiny", dtype="float32"))
    prompt = load_prompts(DatasetConfig(data_files="bundled:tiny", limit=1), loaded.tokenizer,
                          8, 4)[0]
    with torch.inference_mode():
        return loaded.model(torch.tensor([prompt.input_ids])).logits[0, -1].float()


@pytest.mark.parametrize("method,params", [
    ("top_k", {"top_k": 6}), ("ancestral", {}),
    ("locally_typical_distance", {"alpha": 0.5, "top_k": 20}), ("top_p", {"top_p": 0.8})])
def test_first_tokens_follow_the_models_renormalised_softmax(first_step_logits, method, params):
    """Chi-square over 40,000 seeds; a deliberately wrong sampler (uniform over the kept set)
    must fail the same test. Temperature 0.2 sharpens the tiny model's near-uniform softmax."""
    n, params = 40_000, {**params, "temperature": 0.2}
    logits = first_step_logits.expand(n, -1)
    keep = make_selector(method, **params).keep_mask(first_step_logits[None])[0]
    tokens = sample(method, logits, torch.arange(n), 17, **params)
    assert bool(keep[tokens].all())
    kept = keep.nonzero().flatten()
    probs = (first_step_logits[kept].double() / 0.2).softmax(-1).numpy()
    counts = (tokens[:, None] == kept[None]).sum(0).numpy()
    if method == "ancestral":  # pool the tail so every expected count is >= 5
        order = np.argsort(-probs)
        head = order[np.cumsum(probs[order]) < 0.9]
        probs = np.append(probs[head], 1 - probs[head].sum())
        counts = np.append(counts[head], n - counts[head].sum())
    assert chisquare(counts, probs * n).pvalue > 1e-4
    wrong = torch.randint(len(kept), (n,), generator=torch.Generator().manual_seed(0))
    wrong_counts = np.bincount(wrong.numpy(), minlength=len(kept))
    if method == "ancestral":
        wrong_counts = np.append(wrong_counts[head], n - wrong_counts[head].sum())
    assert chisquare(wrong_counts, probs * n).pvalue < 1e-6


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), k1=st.integers(1, 40), k2=st.integers(1, 40),
       sharpness=st.floats(0.2, 4.0))
def test_configs_whose_kept_sets_hold_the_overall_winner_pick_it(seed, k1, k2, sharpness):
    torch.manual_seed(seed)
    logits = torch.randn(16, 64) * sharpness
    seeds, prompts = torch.full((16,), seed % 1000), torch.arange(16)
    winner = sample("ancestral", logits, seeds, prompts)
    for method, params in [("top_k", {"top_k": k1}), ("top_k", {"top_k": k2}),
                           ("locally_typical", {"alpha": 0.5, "top_k": k1}),
                           ("top_p", {"top_p": 0.7})]:
        keep = make_selector(method, **params).keep_mask(logits)
        picked = sample(method, logits, seeds, prompts, **params)
        holds = keep.gather(-1, winner[:, None])[:, 0]
        assert torch.equal(picked[holds], winner[holds])


def test_top_k_of_the_whole_vocabulary_is_ancestral_and_top_1_is_greedy():
    logits = torch.randn(32, 500)
    seeds, prompts = torch.arange(32), torch.arange(32)
    assert torch.equal(sample("top_k", logits, seeds, prompts, top_k=500),
                       sample("ancestral", logits, seeds, prompts))
    assert torch.equal(sample("top_k", logits, seeds, prompts, top_k=1),
                       sample("greedy", logits, seeds, prompts))
    assert torch.equal(sample("greedy", logits, seeds, prompts), logits.argmax(-1))


@pytest.mark.parametrize("rows", [[], [slice(2, 4)], [slice(0, 2), slice(3, 4)],
                                  [slice(2, 4), slice(0, 2)]])
def test_diagnostics_refuse_groups_that_are_not_consecutive_from_row_0(rows):
    groups = [(make_selector("top_k"), r) for r in rows]
    with pytest.raises(ValueError, match="not consecutive slices from row 0"):
        diagnose_groups(torch.randn(4, 50), torch.ones(4, 50, dtype=torch.bool), groups)
