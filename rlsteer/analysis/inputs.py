"""What the model-based analyses read: a vector file with its model, and prompts from a dataset.

Example:
    >>> model, tok, vectors, meta = load_with_vectors("runs/demo/train/vectors.safetensors")  # doctest: +SKIP
    >>> prompts = analysis_prompts("math_train", 16, tok, meta.get("template"))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlsteer.steering.vectors import SteeringVectors, read_vector_file
from rlsteer.templates import DEFAULT_TEMPLATE


def load_with_vectors(path: str | Path, model_spec: str | None = None, device: str = "cpu",
                      dtype: str = "auto") -> tuple[Any, Any, SteeringVectors, dict[str, str]]:
    """(model, tokenizer, vectors, file metadata); the model is the one the file records unless given, in
    ``dtype`` (``auto``: the checkpoint's on a GPU, bf16 for the paper's models as in the authors' analyses;
    float32 on a CPU)."""
    from rlsteer.models import DEFAULT_MODEL, load_model

    meta = read_vector_file(path)[1]
    model, tok = load_model(model_spec or meta.get("model") or DEFAULT_MODEL, device=device, dtype=dtype)
    return model, tok, SteeringVectors.load(path, model), meta


def analysis_prompts(dataset: str, n: int, tokenizer: Any, template: str | None, *, data_dir: str | None = None,
                     prefix: str | None = None) -> list[Any]:
    """The first ``n`` problems of ``dataset`` shuffled with seed 0 (the authors' choice), as prompts."""
    from rlsteer.data import load_problems
    from rlsteer.templates import build_prompt

    problems = load_problems(dataset, data_dir=data_dir, limit=n, shuffle_seed=0)
    return [build_prompt(tokenizer, p.problem, template or DEFAULT_TEMPLATE, prefix) for p in problems]


def with_vector_defaults(cfg: Any, vectors: str | Path) -> Any:
    """``cfg`` (an EvalConfig) with the model and template the vector file records, where ``cfg`` leaves them open.

    Analyses compare the base model with steered variants, so every variant must share them explicitly.
    """
    from dataclasses import replace

    meta = read_vector_file(vectors)[1]
    return replace(cfg, model=replace(cfg.model, name=cfg.model.name or meta.get("model") or None),
                   target=replace(cfg.target, template=cfg.target.template or meta.get("template") or DEFAULT_TEMPLATE))
