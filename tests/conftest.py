"""Shared fixtures: tiny random models (cached per session; tests that mutate a model deep-copy it)."""

from __future__ import annotations

import copy
import os
import pickle
from functools import cache
from pathlib import Path

import pytest
import torch

from rlsteer.models import load_model

TINY_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "olmo", "phi3")


@cache
def _tiny(name: str):
    return load_model(f"tiny-random-{name}")


@pytest.fixture
def tiny():
    """``tiny(family)`` → a fresh deep copy of that tiny random model and its tokenizer."""

    def make(family: str = "llama"):
        model, tok = _tiny(family)
        return copy.deepcopy(model), tok

    return make


@pytest.fixture
def batch():
    """Two left-padded prompts for the SmolLM2 tokenizer the tiny models share."""

    def make(tok, texts=("The sum of 12 and 30 is", "Hi")):
        tok.padding_side = "left"
        enc = tok(list(texts), return_tensors="pt", padding=True)
        return enc.input_ids, enc.attention_mask

    return make


def shared_data_dir() -> Path:
    return Path(os.environ.get("RLSTEER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Make every unpickling entry point fail loudly and record the attempt."""
    calls: list[str] = []

    def refuse(name):
        def fn(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called")
        return fn

    class RefusingUnpickler(pickle.Unpickler):  # a class, so that modules imported later may subclass it
        def load(self):
            calls.append("pickle.Unpickler.load")
            raise AssertionError("pickle.Unpickler.load called")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    return calls
