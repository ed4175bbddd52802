#!/usr/bin/env bash
# GPU benchmark, self-contained and offline, in steps that each finish in at most 8 minutes on
# one H200 (a lent GPU machine runs one command for at most 10 minutes, 15 minutes in all, start
# included): run them one by one, one command each. Estimates from the last measured H200 speeds
# (bench/RESULTS.md, 2026-11-28: bf16, 64 prompts x 256 new tokens; SmolLM2's shape 2,178 tok/s
# bare generate, 2,260-2,661 through the harness, fused seed_comparison 43.0 s and one job at a
# time 121.4 s; Llama-3-8B's shape 1,763 tok/s bare, 1,689-2,177 through the harness; the
# whole default run 480 s). Each step runs under `timeout` (STEP_SECONDS, default 480 s):
#   selectors    selector and sampler step cost vs transformers' warpers      about 2 min
#   e2e-smol     SmolLM2 end to end: harness vs bare generate, 3 interleaved repeats, and the
#                static-cache probe (36 s of compile)                         about 3 min
#   fusion       seed_comparison fused vs one job at a time (11 jobs x 64 prompts, 704 rows per
#                forward), 2 interleaved repeats of 43 + 121 s                about 6 min
#   e2e-llama    Llama-3-8B's shape (random weights) end to end, 3 repeats    about 3 min
#   study-smol   the study-sized sweep (bench.study): seed_comparison fused on SmolLM2's shape,
#                256 prompts x 256 tokens, batch_size=auto, eager (112 s at 6,425 tok/s), then
#                compiled twice (compile + run, then steady state), a profile after the eager
#                and the steady run; each figure is printed as it is measured   about 7 min
#   study-llama  the same on Llama-3-8B's shape, 4 configurations x 128 prompts   about 5 min
#   all          every step in turn, for a machine without the lent device's limits (26 min)
#
#   bench/gpu.sh STEP            the bundled SmolLM2 and the Austen corpus (`make setup` first)
#   bench/gpu.sh --random STEP   SmolLM2's exact shape with random weights on generated text: for
#                                a GPU machine without the bundled assets or a package registry.
#                                It uses that machine's own torch and transformers (python3;
#                                PY=... to choose): pyproject.toml accepts torch >= 2.11 and
#                                transformers >= 5.17. Carry only small wheels (hydra-core,
#                                omegaconf, antlr4-python3-runtime; see bench/RESULTS.md)
#   bench/gpu.sh --smoke         every step's code on CPU with the tiny model, in seconds (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STEPS="selectors e2e-smol fusion e2e-llama study-smol study-llama"
if [ "${1:-}" = "--smoke" ]; then
  "$PY" -m bench.selectors --smoke
  "$PY" -m bench.e2e --smoke --batch 4 --new 8 --limit 8 --skip amortisation
  "$PY" -m bench.fusion --smoke --limit 4 --new 8 --batch 4 --repeats 1
  "$PY" -m bench.study --smoke
  exit 0
fi
if [ "${1:-}" = "--random" ]; then
  shift
  SMOL=(--model smollm2_random --dataset synthetic)
  LLAMA=(--model llama3_8b_random --dataset synthetic)
else
  SMOL=(--model smollm2 --dataset austen)
  LLAMA=(--model llama3_8b_random --dataset austen)
fi
if [ $# -ne 1 ] || ! [[ " $STEPS all " == *" $1 "* ]]; then
  echo "usage: bench/gpu.sh [--random] STEP, one of: $STEPS all (or --smoke); see the header" >&2
  exit 2
fi
if [ "${SMOL[1]}" = smollm2 ]; then
  "$PY" -m harness.assets  # the bundled model and corpus, built once (needs the registries)
fi

step() {
  local seconds=${STEP_SECONDS:-480}
  echo "== bench/gpu.sh $1 (at most $seconds s)" >&2
  shift
  timeout --signal=INT --kill-after=20 "$seconds" "$PY" -u "$@"
}

run() {
  case "$1" in
    selectors) step "$1" -m bench.selectors ;;
    e2e-smol) step "$1" -m bench.e2e "${SMOL[@]}" --batch 64 --new 256 --limit 64 --repeats 3 \
      --skip amortisation --compile-probe ;;
    fusion) step "$1" -m bench.fusion "${SMOL[@]}" --limit 64 --new 256 --batch 704 --repeats 2 ;;
    e2e-llama) step "$1" -m bench.e2e "${LLAMA[@]}" --batch 64 --new 256 --limit 64 --repeats 3 \
      --skip amortisation ;;
    study-smol) step "$1" -m bench.study "${SMOL[@]}" --jobs 11 --limit 256 --new 256 \
      --today 6425 ;;
    study-llama) step "$1" -m bench.study "${LLAMA[@]}" --jobs 4 --limit 128 --new 256 \
      --today 2000 ;;
  esac
}

if [ "$1" = all ]; then
  for name in $STEPS; do run "$name"; done
else
  run "$1"
fi
