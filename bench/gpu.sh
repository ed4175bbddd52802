#!/usr/bin/env bash
# GPU benchmark, self-contained and offline: selector step cost, then end-to-end decoding in
# bfloat16 (batch 64, prompt 32, 256 new tokens) on the bundled SmolLM2 and on a random
# Llama-3-8B-shaped model, printing tokens/s and the selector's share of the step time.
# Under 5 minutes on one H100. `--smoke`: the same code path on CPU with the tiny model (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "--smoke" ]; then
  "$PY" -m bench.selectors --smoke
  "$PY" -m bench.e2e --smoke --batch 4 --new 8 --limit 8 --skip amortisation
  exit 0
fi
# The bundled assets must have been built (`make setup`, which needs the package registries
# once); on a machine without them this stops with a message saying so.
"$PY" -m harness.assets
"$PY" -m bench.selectors
"$PY" -m bench.e2e --model smollm2 --batch 64 --new 256 --limit 64 --repeats 2 --skip amortisation
"$PY" -m bench.e2e --model llama3_8b_random --batch 64 --new 256 --limit 64 --repeats 2 \
  --skip amortisation
