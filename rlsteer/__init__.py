"""rlsteer: train, evaluate and dissect RL-trained steering vectors on frozen language models.

Example:
    >>> import torch, rlsteer
    >>> model, tok = rlsteer.load_model("tiny-random-llama")
    >>> vectors = rlsteer.SteeringVectors.for_model(model, layers=[3])
    >>> with rlsteer.steer(model, vectors):
    ...     logits = model(tok("1 + 1 =", return_tensors="pt").input_ids).logits
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Top-level names are imported on first use, so that light modules (rewards in worker processes, the CLI's
# --help) do not pay for importing torch and transformers.
_EXPORTS = {
    "load_model": "rlsteer.models",
    "architecture_of": "rlsteer.architectures",
    "SteeringVectors": "rlsteer.steering.vectors",
    "Entry": "rlsteer.steering.sites",
    "steer": "rlsteer.steering.hooks",
    "patch": "rlsteer.steering.patching",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlsteer' has no attribute {name!r}")
