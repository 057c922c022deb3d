"""Apply steering vectors to a model: ``steer(model, vectors)`` → a removable handle / context manager.

Every addition is out of place (gradients reach the vectors, never the frozen weights), happens at every
position of every forward pass (prompt and generated, with or without a KV cache), and casts the fp32
vector to the hidden state's dtype where it is added.

Example:
    >>> import torch
    >>> from rlsteer import load_model, steer
    >>> model, tok = load_model("tiny-random-llama")
    >>> ids = tok("2 + 2 =", return_tensors="pt").input_ids
    >>> with steer(model, {3: torch.randn(64)}):      # resid_post at layer 3
    ...     steered = model(ids).logits
    >>> handle = steer(model, {3: torch.randn(64)})    # long-lived: remove() when done
    >>> handle.remove()
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from rlsteer.architectures import Architecture, architecture_of
from rlsteer.steering.branch import install_branch_patch
from rlsteer.steering.handles import SteeringHandle, VectorSource, install_residual
from rlsteer.steering.sites import BRANCH_SITES, Entry, SiteError
from rlsteer.steering.vectors import SteeringVectors, VectorFileError, as_entry, check_entries_fit

Getter = Callable[[], torch.Tensor]  # → the current vector [d_model]


def steer(model: nn.Module, vectors: SteeringVectors | Mapping[int, torch.Tensor] |
          Mapping[Entry, torch.Tensor], *, scale: float = 1.0) -> SteeringHandle:
    """Add ``vectors`` to ``model`` until the returned handle is removed (or its ``with`` block ends).

    Args:
        model: a supported ``*ForCausalLM`` (see :mod:`rlsteer.architectures`).
        vectors: a :class:`SteeringVectors`, a ``{layer: tensor [d]}`` dict (``resid_post`` at those
            layers) or an ``{Entry: tensor}`` dict. Plain tensors are used as they are, so gradients
            reach them if they require grad.
        scale: a multiplier on every vector (on top of ``SteeringVectors.scale``).
    """
    arch = architecture_of(model)
    getters = _getters(vectors, arch)
    by_layer: dict[int, list[Entry]] = defaultdict(list)
    for entry in getters:
        by_layer[entry.layer].append(entry)
    for layer, entries in by_layer.items():
        _check_layer_plan(layer, entries)
    return install(arch, getters, scale=scale)


def install(arch: Architecture, getters: Mapping[Entry, Getter], *, scale: float = 1.0,
            heads: Mapping[Entry, tuple[int, ...]] | None = None) -> SteeringHandle:
    """Install the hooks of every entry (``getters[entry]()`` gives its vector) and return their handle; on any
    error the hooks installed so far are removed. ``heads`` gives a branch patch several heads (default: the
    entry's own head). Branch patches of a layer go after its residual additions."""
    source = VectorSource(getters, scale)
    handles: list[RemovableHandle] = [arch.decoder().register_forward_pre_hook(source.begin),
                                      arch.decoder().register_forward_hook(source.end)]
    try:
        for entry in sorted(getters, key=lambda e: (e.layer, e.site in BRANCH_SITES)):
            if entry.site in BRANCH_SITES:
                own = () if entry.head is None else (entry.head,)
                chosen = heads.get(entry, own) if heads is not None else own
                handles += install_branch_patch(arch, entry.layer, entry.site, chosen, source.fn(entry))
            else:
                handles += install_residual(arch, entry, source.fn(entry))
    except Exception:
        SteeringHandle(handles).remove()
        raise
    return SteeringHandle(handles)


def _getters(vectors: Any, arch: Architecture) -> dict[Entry, Getter]:
    if isinstance(vectors, SteeringVectors):
        check_entries_fit(arch, vectors.d_model, vectors.entries, vectors.metadata)
        return {e: _vector_getter(vectors, e) for e in vectors.entries}
    if not isinstance(vectors, Mapping):
        raise TypeError(f"steer() takes SteeringVectors or a dict of tensors, not {type(vectors).__name__}")
    getters: dict[Entry, Getter] = {}
    for key, tensor in vectors.items():
        entry = Entry("resid_post", key) if isinstance(key, int) else as_entry(key)
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 1:
            raise VectorFileError(f"vector for {entry.name} must be a 1-D tensor [d_model]")
        getters[entry] = _constant(tensor)
    widths = {t().shape[0] for t in getters.values()}
    for width in widths:
        check_entries_fit(arch, width, list(getters), {})
    return getters


def _vector_getter(vectors: SteeringVectors, entry: Entry) -> Getter:
    return lambda: vectors.vector(entry)


def _constant(tensor: torch.Tensor) -> Getter:
    return lambda: tensor


def _check_layer_plan(layer: int, entries: list[Entry]) -> None:
    branch = [e for e in entries if e.site in BRANCH_SITES]
    if len(branch) > 1:
        raise SiteError(f"layer {layer}: at most one attention-branch patch per layer, got "
                        f"{[e.name for e in branch]}; use rlsteer.patch(..., heads=[...]) for several heads")
    if branch and any(e.site == "ln1_out" for e in entries):
        raise SiteError(f"layer {layer}: {branch[0].name} recomputes LN1 and cannot be combined with ln1_out")


__all__ = ["SteeringHandle", "install", "steer"]
