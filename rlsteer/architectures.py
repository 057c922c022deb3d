"""Where things live inside each supported decoder-only architecture.

Every supported family is a pre-norm transformer whose block ℓ computes

    U = LN1(X);  Y = X + Attn(U);  Z = Y + MLP(LN2(Y))

with the modules named below. The steering hooks, the analyses and the vLLM plugin find modules only
through :class:`Architecture`, never by hard-coded attribute names.

Example:
    >>> from rlsteer.architectures import architecture_of
    >>> arch = architecture_of(model)            # doctest: +SKIP
    >>> arch.n_layers, arch.n_heads, arch.n_kv_heads, arch.head_dim  # doctest: +SKIP
    (30, 9, 3, 64)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from rlsteer.errors import RlsteerError


@dataclass(frozen=True)
class Family:
    """Module paths of one architecture family, relative to the ``*ForCausalLM`` model.

    ``q_proj``/``k_proj``/``v_proj`` name the projection module of each stream; for fused projections
    (Phi-3's ``qkv_proj``) all three name the same module and the stream's columns start at an offset
    computed by :meth:`Architecture.projection`.
    """

    name: str
    model_types: tuple[str, ...]
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    attn: str = "self_attn"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    mlp: str = "mlp"
    down_proj: str = "down_proj"
    ln1: str = "input_layernorm"
    ln2: str = "post_attention_layernorm"
    fused_qkv: bool = False


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",)),
    Family("mistral", ("mistral",)),
    Family("qwen2", ("qwen2",)),
    Family("qwen3", ("qwen3",)),
    Family("gemma", ("gemma",)),
    Family("olmo", ("olmo",)),
    Family("phi3", ("phi3",), q_proj="qkv_proj", k_proj="qkv_proj", v_proj="qkv_proj", fused_qkv=True),
)


def supported_model_types() -> list[str]:
    """The HF ``config.model_type`` values rlsteer can steer."""
    return sorted(t for f in FAMILIES for t in f.model_types)


class UnsupportedArchitectureError(RlsteerError):
    pass


def family_for(model_type: str) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedArchitectureError(
        f"architecture {model_type!r} is not supported; supported model types: "
        f"{', '.join(supported_model_types())} (open an issue to add one: it needs a row in "
        "rlsteer/architectures.py and the identity tests)"
    )


@dataclass(frozen=True)
class Projection:
    """One stream's slice of a (possibly fused) projection: columns ``offset + h*head_dim …``."""

    module: nn.Linear
    offset: int
    head_dim: int

    def columns(self, head: int) -> slice:
        start = self.offset + head * self.head_dim
        return slice(start, start + self.head_dim)


@dataclass(frozen=True)
class Architecture:
    """A loaded model seen through its family's module paths, with its attention geometry."""

    family: Family
    model: nn.Module = field(repr=False)
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA): query head h reads KV head h // group_size."""
        return self.n_heads // self.n_kv_heads

    def layers(self) -> nn.ModuleList:
        return _get(self.model, self.family.layers)

    def layer(self, i: int) -> nn.Module:
        return self.layers()[i]

    def attn(self, i: int) -> nn.Module:
        return _get(self.layer(i), self.family.attn)

    def mlp(self, i: int) -> nn.Module:
        return _get(self.layer(i), self.family.mlp)

    def down_proj(self, i: int) -> nn.Linear:
        return _get(self.mlp(i), self.family.down_proj)

    def ln1(self, i: int) -> nn.Module:
        return _get(self.layer(i), self.family.ln1)

    def ln2(self, i: int) -> nn.Module:
        return _get(self.layer(i), self.family.ln2)

    def o_proj(self, i: int) -> nn.Linear:
        return _get(self.attn(i), self.family.o_proj)

    def projection(self, i: int, stream: str) -> Projection:
        """The ``stream`` ∈ {q, k, v} projection of layer ``i`` with its column offset."""
        attn = self.attn(i)
        name = {"q": self.family.q_proj, "k": self.family.k_proj, "v": self.family.v_proj}[stream]
        offset = 0
        if self.family.fused_qkv:
            q_cols = self.n_heads * self.head_dim
            kv_cols = self.n_kv_heads * self.head_dim
            offset = {"q": 0, "k": q_cols, "v": q_cols + kv_cols}[stream]
        return Projection(_get(attn, name), offset, self.head_dim)

    def final_norm(self) -> nn.Module:
        return _get(self.model, self.family.final_norm)

    def lm_head(self) -> nn.Linear:
        return _get(self.model, self.family.lm_head)

    def decoder(self) -> nn.Module:
        """The module that runs the whole layer stack (``model.model`` for every supported family)."""
        return _get(self.model, self.family.layers.rsplit(".", 1)[0])


def architecture_of(model: nn.Module) -> Architecture:
    """Describe ``model`` (a ``*ForCausalLM``) or raise :class:`UnsupportedArchitectureError`."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError("expected a transformers *ForCausalLM model with a .config")
    return Architecture(model=model, **shape_of(config))


def shape_of(config: Any) -> dict[str, Any]:
    """A transformers config's family and geometry (the fields of :class:`Architecture` but the model), read
    without loading weights.

    Example:
        >>> from transformers import LlamaConfig
        >>> shape = shape_of(LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2))
        >>> shape["family"].name, shape["d_model"], shape["n_kv_heads"], shape["head_dim"]
        ('llama', 64, 2, 16)
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = config.num_attention_heads
    return {"family": family_for(config.model_type), "n_layers": config.num_hidden_layers,
            "d_model": config.hidden_size, "n_heads": n_heads,
            "n_kv_heads": getattr(config, "num_key_value_heads", None) or n_heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // n_heads,
            "vocab_size": config.vocab_size}


def _get(root: nn.Module, path: str) -> Any:
    module: Any = root
    for part in path.split("."):
        module = getattr(module, part)
    return module
