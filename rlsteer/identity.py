"""What a vector file or a run records about the model it was made for: its name, revision and geometry.

Example:
    >>> from transformers import LlamaConfig
    >>> identity("my/model", "", LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2))["n_layers"]
    '2'
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rlsteer.architectures import shape_of
from rlsteer.models import model_folder


def model_identity(model: nn.Module) -> dict[str, str]:
    """What a vector file or a run records about the model it was made for."""
    config: Any = model.config
    name = getattr(config, "rlsteer_source", None) or getattr(config, "_name_or_path", "")
    revision = getattr(config, "rlsteer_revision", None) or getattr(config, "_commit_hash", "") or ""
    return identity(str(name), str(revision), config)


def config_identity(spec: str) -> dict[str, str]:
    """The same record for model ``spec``, read from its config alone (no weights are loaded)."""
    from transformers import AutoConfig

    return identity(spec, "", AutoConfig.from_pretrained(model_folder(spec)))


def identity(name: str, revision: str, config: Any) -> dict[str, str]:
    """The identity record of a model called ``name`` at ``revision`` with this transformers ``config``."""
    shape = shape_of(config)
    return {"model": name, "model_revision": revision, "architecture": shape["family"].name,
            **{key: str(shape[key]) for key in ("d_model", "n_layers", "n_heads", "n_kv_heads")}}
