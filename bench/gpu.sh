#!/usr/bin/env bash
# GPU benchmark, self-contained and offline: selector and sampler step cost, end-to-end decoding
# in bfloat16 (batch 64, prompt 32, 256 new tokens) through the harness against a bare
# model.generate on SmolLM2 and on a random Llama-3-8B-shaped model, and sweeps/seed_comparison
# fused (all 11 jobs, 704 rows per forward) against one job at a time (64 rows per forward).
# About 5 minutes on one H100/H200.
#   bench/gpu.sh            the bundled SmolLM2 and the Austen corpus (`make setup` first)
#   bench/gpu.sh --random   SmolLM2's exact shape with random weights on generated text: for a
#                           GPU machine without the bundled assets or a package registry (carry
#                           wheels of hydra-core, omegaconf, antlr4-python3-runtime, datasets,
#                           dill and multiprocess; see bench/RESULTS.md)
#   bench/gpu.sh --random study   the study-sized sweeps of issue 13 instead (about 8 minutes):
#                           seed_comparison fused on SmolLM2's shape (256 prompts x 1 seed x 256
#                           tokens) and 4 configurations x 128 prompts on Llama-3-8B's, each at
#                           generation.batch_size=auto, eager then compiled twice, with a
#                           torch.profiler table of 32 steps after each (bench.study)
#   bench/gpu.sh --smoke    the same code on CPU with the tiny model, in seconds (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "--smoke" ]; then
  "$PY" -m bench.selectors --smoke
  "$PY" -m bench.e2e --smoke --batch 4 --new 8 --limit 8 --skip amortisation
  "$PY" -m bench.fusion --smoke --limit 4 --new 8 --batch 4 --repeats 1
  "$PY" -m bench.study --smoke
  exit 0
fi
if [ "${1:-}" = "--random" ]; then
  SMOL=(--model smollm2_random --dataset synthetic)
  LLAMA=(--model llama3_8b_random --dataset synthetic)
else
  "$PY" -m harness.assets  # the bundled model and corpus, built once (needs the registries)
  SMOL=(--model smollm2 --dataset austen)
  LLAMA=(--model llama3_8b_random --dataset austen)
fi
if [ "${2:-}" = "study" ]; then
  "$PY" -m bench.study "${SMOL[@]}" --jobs 11 --limit 256 --new 256 --today 6425
  "$PY" -m bench.study "${LLAMA[@]}" --jobs 4 --limit 128 --new 256 --today 2000
  exit 0
fi
"$PY" -m bench.selectors
"$PY" -m bench.e2e "${SMOL[@]}" --batch 64 --new 256 --limit 64 --repeats 5 --skip amortisation \
  --compile-probe
"$PY" -m bench.fusion "${SMOL[@]}" --limit 64 --new 256 --batch 704 --repeats 5
"$PY" -m bench.e2e "${LLAMA[@]}" --batch 64 --new 256 --limit 64 --repeats 5 --skip amortisation
