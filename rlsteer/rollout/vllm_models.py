"""Steered vLLM model classes: vLLM's own models plus a zero bias on every ``down_proj`` and ``o_proj``.

Imported by vLLM (never by rlsteer's core) when an engine uses a ``Rlsteer*`` architecture. The biases are
ordinary parameters of vLLM's ``RowParallelLinear`` layers, so they work eagerly, compiled and under CUDA
graphs (captured graphs read the same storage, which is updated in place) and with tensor parallelism (a
row-parallel layer adds its bias once, on TP rank 0). They are not in the checkpoint: :func:`_steered`
reports them as loaded so that vLLM's "weights not initialised" check passes, and they start at zero, so an
unsteered engine computes exactly what the plain model computes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from vllm.model_executor.models.gemma import GemmaForCausalLM
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralForCausalLM
from vllm.model_executor.models.phi3 import Phi3ForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM


def add_steering_biases(model: nn.Module) -> list[str]:
    """Give each local decoder layer's ``mlp.down_proj`` and ``self_attn.o_proj`` a zero bias; their names."""
    names = []
    for i, layer in enumerate(model.model.layers):  # type: ignore[union-attr, arg-type]
        if not hasattr(layer, "mlp"):  # a pipeline-parallel placeholder for another stage's layer
            continue
        for path in ("mlp.down_proj", "self_attn.o_proj"):
            proj = layer.get_submodule(path)
            if proj.bias is not None:
                raise RuntimeError(f"layer {i} {path} already has a bias; rlsteer cannot steer this model")
            proj.bias = nn.Parameter(torch.zeros(proj.output_size, dtype=proj.params_dtype,
                                                 device=proj.weight.device), requires_grad=False)
            names.append(f"model.layers.{i}.{path}.bias")
    return names


def _steered(base: type[nn.Module]) -> type[nn.Module]:
    def __init__(self: Any, *, vllm_config: Any, prefix: str = "") -> None:
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        self._rlsteer_bias_names = add_steering_biases(self)

    def load_weights(self: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = base.load_weights(self, weights)  # type: ignore[attr-defined]
        return {*loaded, *self._rlsteer_bias_names}

    def rlsteer_biases(self: Any) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return {i: (layer.mlp.down_proj.bias, layer.self_attn.o_proj.bias)
                for i, layer in enumerate(self.model.layers) if hasattr(layer, "mlp")}

    return type(f"Steered{base.__name__}", (base,),
                {"__init__": __init__, "load_weights": load_weights, "rlsteer_biases": rlsteer_biases,
                 "__module__": __name__, "__doc__": f"{base.__name__} with rlsteer's steering biases."})


SteeredLlamaForCausalLM = _steered(LlamaForCausalLM)
SteeredMistralForCausalLM = _steered(MistralForCausalLM)
SteeredQwen2ForCausalLM = _steered(Qwen2ForCausalLM)
SteeredQwen3ForCausalLM = _steered(Qwen3ForCausalLM)
SteeredGemmaForCausalLM = _steered(GemmaForCausalLM)
SteeredPhi3ForCausalLM = _steered(Phi3ForCausalLM)
