"""rlsteer's vLLM plugin: registers steered variants of vLLM's model classes under their own names.

vLLM loads it in every engine process through the ``vllm.general_plugins`` entry point (see pyproject);
:class:`rlsteer.rollout.vllm.VLLMBackend` also calls :func:`register` itself. Registration is lazy
(``module:Class`` strings), touches no built-in architecture and so changes nothing for other vLLM users:
only an engine created with ``hf_overrides={"architectures": [steered_architecture(...)]}`` uses them.

Example:
    >>> steered_architecture("Qwen2ForCausalLM")
    'RlsteerQwen2ForCausalLM'
"""

from __future__ import annotations

from rlsteer.errors import RlsteerError

#: HF architecture → the steered vLLM class (in rlsteer.rollout.vllm_models)
STEERED = {
    "LlamaForCausalLM": "SteeredLlamaForCausalLM",
    "MistralForCausalLM": "SteeredMistralForCausalLM",
    "Qwen2ForCausalLM": "SteeredQwen2ForCausalLM",
    "Qwen3ForCausalLM": "SteeredQwen3ForCausalLM",
    "GemmaForCausalLM": "SteeredGemmaForCausalLM",
    "Phi3ForCausalLM": "SteeredPhi3ForCausalLM",
}


def steered_architecture(hf_architecture: str) -> str:
    """The registered name of the steered variant of ``hf_architecture``."""
    if hf_architecture not in STEERED:
        raise RlsteerError(f"the vLLM backend has no steered variant of {hf_architecture}; supported: "
                           f"{', '.join(STEERED)}; use rollout.backend=hf")
    return f"Rlsteer{hf_architecture}"


def register() -> None:
    """Register every steered architecture with vLLM's model registry (idempotent)."""
    from vllm import ModelRegistry

    for hf_name, cls in STEERED.items():
        ModelRegistry.register_model(steered_architecture(hf_name), f"rlsteer.rollout.vllm_models:{cls}")
