"""One factory for rollout backends: the model section and the engine section decide which, and how.

Training (``rollout.*``) and evaluation (``engine.*``) describe their engine with the same
:class:`rlsteer.config.BackendSection` fields, so both get theirs here.

Example:
    >>> from rlsteer import load_model
    >>> from rlsteer.config import BackendSection, ModelSection
    >>> model, tok = load_model("tiny-random-llama")
    >>> backend = make_backend(ModelSection(name="tiny-random-llama"), BackendSection(batch_size=4), model, tok)
    >>> type(backend).__name__
    'HFBackend'
    >>> backend.close()
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rlsteer.config import BackendSection, ModelSection
from rlsteer.distributed import SINGLE, World
from rlsteer.rollout.base import Backend
from rlsteer.rollout.hf import HFBackend


def make_backend(model_cfg: ModelSection, engine: BackendSection, model: nn.Module | None, tokenizer: Any, *,
                 seed: int = 0, max_model_len: int | None = None, share_prompts: bool = True,
                 progress: bool | None = None, world: World = SINGLE) -> Backend:
    """The backend ``engine.backend`` names for the model ``model_cfg`` describes.

    ``hf`` samples with ``model`` itself (already loaded, on its device); ``vllm`` starts an engine on the
    same weights (:func:`rlsteer.models.model_folder`; ``model`` may then be None), seeded with ``seed`` and
    limited to ``max_model_len`` tokens. ``share_prompts`` is the HF backend's prefill sharing; ``progress``
    shows a progress bar (None: only on a terminal).
    """
    if engine.backend == "vllm":
        from rlsteer.models import model_folder
        from rlsteer.rollout.vllm import VLLMBackend

        return VLLMBackend(model_folder(model_cfg.name), tokenizer, dtype=model_cfg.dtype, seed=seed,
                           max_model_len=max_model_len, tensor_parallel_size=engine.vllm_tensor_parallel_size,
                           gpu_memory_utilization=engine.vllm_gpu_memory_utilization,
                           enforce_eager=engine.vllm_enforce_eager, revision=model_cfg.revision, world=world,
                           progress=progress)
    if model is None:
        raise ValueError("the hf backend samples with a loaded model; pass it")
    return HFBackend(model, tokenizer, batch_size=engine.batch_size, progress=progress, share_prompts=share_prompts)
