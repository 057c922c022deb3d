"""Circuit patching: a vector moved to the input of block ℓ, with parts of the block kept vanilla.

:func:`patch` puts any vector into block ℓ as one variant (for one head or a set of heads);
:func:`patch_from` turns a trained vector into the patch of the block it feeds, as the paper's §6 does. The
variants are listed in :mod:`rlsteer.steering.sites`; the attention-branch machinery is in
:mod:`rlsteer.steering.branch`.

Example:
    >>> from rlsteer import load_model
    >>> from rlsteer.steering import patch
    >>> model, tok = load_model("tiny-random-qwen2")
    >>> s = torch.randn(64)
    >>> with patch(model, s, layer=3, variant="steer_v", heads=1):   # KV head 1 of block 3
    ...     out = model(tok("1 + 1 =", return_tensors="pt").input_ids)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from rlsteer.architectures import architecture_of
from rlsteer.steering.branch import PatchError, check_heads
from rlsteer.steering.handles import SteeringHandle
from rlsteer.steering.hooks import install
from rlsteer.steering.sites import BRANCH_SITES, HEAD_SITES, PATCH_SITES, Entry, SiteError, fed_block, head_limit
from rlsteer.steering.vectors import SteeringVectors


def patch(model: nn.Module, vector: torch.Tensor, layer: int, variant: str,
          heads: int | Iterable[int] | None = None, *, scale: float = 1.0) -> SteeringHandle:
    """Patch ``vector`` [d] into block ``layer`` as ``variant`` for one head or a set of heads.

    ``heads`` are query heads for steer_q / steer_head / skip_head and KV heads for steer_k / steer_v;
    ``full``, ``skip_attn`` and ``skip_layer`` take none. Returns a handle / context manager.
    """
    arch = architecture_of(model)
    if variant not in PATCH_SITES:
        raise SiteError(f"unknown patch variant {variant!r}; variants: {', '.join(PATCH_SITES)}")
    if vector.shape != (arch.d_model,):
        raise SiteError(f"patch vector has shape {tuple(vector.shape)}, the model needs ({arch.d_model},)")
    if not 0 <= layer < arch.n_layers:
        raise SiteError(f"patch layer {layer} is out of range: the model has {arch.n_layers} layers "
                        f"(0..{arch.n_layers - 1})")
    head_tuple = () if heads is None else (heads,) if isinstance(heads, int) else tuple(int(h) for h in heads)
    if variant in BRANCH_SITES:
        check_heads(arch, variant, head_tuple)
    elif head_tuple:
        raise SiteError(f"patch variant {variant!r} takes no heads")
    entry = Entry(variant, layer, head_tuple[0] if variant in HEAD_SITES else None)
    return install(arch, {entry: lambda: vector}, scale=scale, heads={entry: head_tuple})


# ------------------------------------------------------------------------------ a trained vector as a patch


def patch_from(vectors: SteeringVectors, variant: str, *, layer: int | None = None,
               head: int | None = None) -> dict[Entry, torch.Tensor]:
    """The circuit patch of the paper's §6: one trained vector moved into the block it feeds.

    The vector at ``resid_post`` ℓ (or ``resid_pre`` ℓ + 1) is the input of block ℓ + 1 (:func:`fed_block`),
    so the patch goes there: ``full`` reproduces the unmodified vector, ``skip_attn`` hides it from that
    block's attention, ``steer_v`` with head h shows it to KV head h's values only, and so on (see
    :mod:`rlsteer.steering.sites`). ``layer`` picks the vector's layer when the file has several. The result
    is an ``{Entry: vector}`` dict for :func:`rlsteer.steer`.

    Example:
        >>> sv = SteeringVectors.from_dict({("resid_post", 26): torch.ones(4)})
        >>> list(patch_from(sv, "steer_v", head=1))
        [Entry(site='steer_v', layer=27, head=1)]
    """
    if variant not in PATCH_SITES:
        raise SiteError(f"unknown variant {variant!r}; variants: {', '.join(PATCH_SITES)}")
    sources = [e for e in vectors.entries if e.site in ("resid_post", "resid_pre")]
    layers = sorted({e.layer for e in sources})
    if layer is None and len(layers) != 1:
        raise SiteError(f"the file has resid_post/resid_pre vectors at layers {layers}; name one with patch_layer")
    chosen = [e for e in sources if e.layer == (layer if layer is not None else layers[0])]
    if len(chosen) != 1:
        what = f"patch_layer {layer} is not" if not chosen else f"layer {chosen[0].layer} has both a resid_post and"
        raise SiteError(f"{what} one of the file's resid_post/resid_pre layers {layers}; pass --layer "
                        "(target.patch_layer) with one of them")
    source = chosen[0]
    if (variant in HEAD_SITES) != (head is not None):
        raise SiteError(f"{variant} {'needs' if variant in HEAD_SITES else 'takes no'} a head (patch_head)")
    return {Entry(variant, fed_block(source), head): vectors.vector(source).detach()}


def check_patch_fits(patch: Mapping[Entry, torch.Tensor], model: nn.Module | Any) -> None:
    """Raise :class:`PatchError` unless every patched block and head of ``patch`` exists in ``model`` (the
    message starts with the option at fault, ``patch`` or ``patch_head``); ``model`` may also be its shape
    alone (:func:`rlsteer.models.model_shape`), for a check before the weights load."""
    arch = architecture_of(model) if isinstance(model, nn.Module) else model
    for entry in patch:
        if entry.layer >= arch.n_layers:
            raise PatchError(f"patch: the vector feeds block {entry.layer}, which the model does not have "
                             f"({arch.n_layers} layers, 0..{arch.n_layers - 1}); patch a vector of an earlier "
                             "layer (--layer)")
        if entry.head is not None:
            limit, kind = head_limit(entry.site, arch.n_heads, arch.n_kv_heads)
            if entry.head >= limit:
                raise PatchError(f"patch_head={entry.head} is out of range for {entry.site}: the model has "
                                 f"{limit} {kind}; pass --head 0..{limit - 1}")


__all__ = ["PatchError", "check_patch_fits", "patch", "patch_from"]
