"""Bias checkpoints: model folders whose ``mlp.down_proj`` biases carry a steering vector per block.

The authors publish their vectors this way (a resid_post vector at layer ℓ is exactly a bias on block ℓ's
``down_proj``), and ``rlsteer export --format bias`` writes such folders. transformers' model classes have no
``down_proj`` bias, so a plain ``from_pretrained`` would drop them; :func:`load_pretrained` keeps them.

Example:
    >>> import tempfile
    >>> read_checkpoint_biases(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rlsteer.bias_checkpoint.BiasCheckpointError: ... has no model.safetensors (or its index); ...
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlsteer.errors import RlsteerError

BIAS_KEY = re.compile(r"^model\.layers\.(\d+)\.mlp\.down_proj\.bias$")  # every supported family


class BiasCheckpointError(RlsteerError):
    pass


def read_checkpoint_biases(folder: str | os.PathLike[str]) -> dict[int, torch.Tensor]:
    """layer → ``model.layers.{layer}.mlp.down_proj.bias`` [d_model] fp32 in a folder's safetensors (never pickle)."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({f for k, f in json.loads(index.read_text())["weight_map"].items() if BIAS_KEY.match(k)})
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise BiasCheckpointError(f"{folder} has no model.safetensors (or its index); rlsteer reads biases only from "
                           "safetensors, never from pickled .bin files: re-save the model with save_pretrained")
    rows = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                if match := BIAS_KEY.match(key):
                    rows[int(match.group(1))] = f.get_tensor(key).to(torch.float32)
    return dict(sorted(rows.items()))


def load_pretrained(folder: str | os.PathLike[str], **kwargs: Any) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(folder, **kwargs)`` that keeps a bias checkpoint's steering.

    transformers' model classes have no ``down_proj`` bias: they drop such keys and print a load report
    calling them unused. Here the biases become frozen ``down_proj`` biases, and the report is shown only
    when something else was wrong.
    """
    from transformers import AutoModelForCausalLM

    from rlsteer.architectures import architecture_of

    hf_logger = logging.getLogger("transformers.modeling_utils")
    held = _HoldLoadReport()
    hf_logger.addFilter(held)
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, **kwargs)
    finally:
        hf_logger.removeFilter(held)
    model, info = loaded
    unexpected = set(info["unexpected_keys"])
    biases = {k for k in unexpected if BIAS_KEY.match(k)}
    if biases:
        arch = architecture_of(model)
        for layer, value in read_checkpoint_biases(folder).items():
            down = arch.down_proj(layer)
            down.bias = nn.Parameter(value.to(down.weight.device, down.weight.dtype), requires_grad=False)
    if not biases or unexpected - biases or info["missing_keys"] or info["mismatched_keys"]:
        for record in held.records:
            hf_logger.handle(record)
    return model


class _HoldLoadReport(logging.Filter):
    """Keeps transformers' load report back so that it can be shown or dropped after the load."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.records.append(record)
            return False
        return True
