"""Steering vectors built from the model itself rather than trained.

``unembedding_direction`` is the "insert a token direction" experiment of the authors' code
(``insert_vector``; docs/semantics.md#other): the lm_head row of a token, unit-normalised and scaled,
placed at one layer. Added at the last layer it raises that token's logit everywhere, which is what a
trained last-layer vector mostly does for "To" (paper §5).

Example:
    >>> from rlsteer import load_model
    >>> model, tok = load_model("tiny-random-llama")
    >>> sv = unembedding_direction(model, tok, "To", layer=3, norm=8.0)
    >>> round(float(sv.vector(("resid_post", 3)).norm()), 3)
    8.0
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rlsteer.architectures import architecture_of
from rlsteer.errors import RlsteerError
from rlsteer.identity import model_identity
from rlsteer.steering.sites import Entry
from rlsteer.steering.vectors import SteeringVectors


def unembedding_direction(model: nn.Module, tokenizer: Any, token: str, *, layer: int | None = None,
                          norm: float = 8.0, site: str = "resid_post") -> SteeringVectors:
    """``norm · W_U[t] / ‖W_U[t]‖`` at ``layer`` (default: the last) for the single token ``token``."""
    arch = architecture_of(model)
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise RlsteerError(f"{token!r} is {len(ids)} tokens for this tokenizer; pass a string that is exactly "
                           "one token (mind the leading space: 'To' and ' To' are different tokens)")
    layer = arch.n_layers - 1 if layer is None else layer
    row = arch.lm_head().weight[ids[0]].detach().float().cpu()  # [d_model]
    meta = {**model_identity(model), "made_by": f"unembedding_direction(token={token!r}, norm={norm})"}
    vectors = SteeringVectors(arch.d_model, metadata=meta, trainable=False)
    vectors.add(Entry(site, layer), row / row.norm() * norm, trainable=False)
    vectors.validate(model)
    return vectors
