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
from rlsteer.steering.sites import BRANCH_SITES, Entry, SiteError
from rlsteer.steering.vectors import SteeringVectors, VectorFileError, as_entry, check_entries_fit

VectorFn = Callable[[torch.Tensor], torch.Tensor]  # like-tensor → vector [d] in like's dtype and device


class SteeringHandle:
    """Hooks installed by :func:`steer`; ``remove()`` restores the model exactly. Also a context manager."""

    def __init__(self, handles: list[RemovableHandle]) -> None:
        self._handles = handles

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class VectorSource:
    """Effective vectors as hooks see them: scaled, cast like the hidden state, computed once per forward.

    The decoder's pre-hook opens a memo and its post-hook closes it, so a forward pass that adds the same
    vector at several places computes (and differentiates through) it once.
    """

    def __init__(self, getters: Mapping[Entry, Callable[[], torch.Tensor]], scale: float = 1.0) -> None:
        self._getters = dict(getters)
        self._scale = float(scale)
        self._memo: dict[tuple[Entry, torch.dtype, torch.device], torch.Tensor] | None = None

    def begin(self, *_: Any) -> None:
        self._memo = {}

    def end(self, *_: Any) -> None:
        self._memo = None

    def get(self, entry: Entry, like: torch.Tensor) -> torch.Tensor:
        key = (entry, like.dtype, like.device)
        if self._memo is not None and key in self._memo:
            return self._memo[key]
        vector = self._getters[entry]()
        if self._scale != 1.0:
            vector = vector * self._scale
        vector = vector.to(device=like.device, dtype=like.dtype)
        if self._memo is not None:
            self._memo[key] = vector
        return vector

    def fn(self, entry: Entry) -> VectorFn:
        return lambda like: self.get(entry, like)


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
    source = VectorSource(getters, scale)
    handles = [arch.decoder().register_forward_pre_hook(source.begin),
               arch.decoder().register_forward_hook(source.end)]
    by_layer: dict[int, list[Entry]] = defaultdict(list)
    for entry in getters:
        by_layer[entry.layer].append(entry)
    try:
        for layer, entries in sorted(by_layer.items()):
            _check_layer_plan(layer, entries)
            for entry in sorted(entries, key=lambda e: e.site in BRANCH_SITES):  # branch patches go last
                if entry.site in BRANCH_SITES:
                    from rlsteer.steering.patching import install_branch_patch

                    heads = () if entry.head is None else (entry.head,)
                    handles += install_branch_patch(arch, layer, entry.site, heads, source.fn(entry))
                else:
                    handles += install_residual(arch, entry, source.fn(entry))
    except Exception:
        SteeringHandle(handles).remove()
        raise
    return SteeringHandle(handles)


def _getters(vectors: Any, arch: Architecture) -> dict[Entry, Callable[[], torch.Tensor]]:
    if isinstance(vectors, SteeringVectors):
        check_entries_fit(arch, vectors.d_model, vectors.entries, vectors.metadata)
        return {e: _vector_getter(vectors, e) for e in vectors.entries}
    if not isinstance(vectors, Mapping):
        raise TypeError(f"steer() takes SteeringVectors or a dict of tensors, not {type(vectors).__name__}")
    getters: dict[Entry, Callable[[], torch.Tensor]] = {}
    for key, tensor in vectors.items():
        entry = Entry("resid_post", key) if isinstance(key, int) else as_entry(key)
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 1:
            raise VectorFileError(f"vector for {entry.name} must be a 1-D tensor [d_model]")
        getters[entry] = _constant(tensor)
    widths = {t().shape[0] for t in getters.values()}
    for width in widths:
        check_entries_fit(arch, width, list(getters), {})
    return getters


def _vector_getter(vectors: SteeringVectors, entry: Entry) -> Callable[[], torch.Tensor]:
    return lambda: vectors.vector(entry)


def _constant(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: tensor


def _check_layer_plan(layer: int, entries: list[Entry]) -> None:
    branch = [e for e in entries if e.site in BRANCH_SITES]
    if len(branch) > 1:
        raise SiteError(f"layer {layer}: at most one attention-branch patch per layer, got "
                        f"{[e.name for e in branch]}; use rlsteer.patch(..., heads=[...]) for several heads")
    if branch and any(e.site == "ln1_out" for e in entries):
        raise SiteError(f"layer {layer}: {branch[0].name} recomputes LN1 and cannot be combined with ln1_out")


# ------------------------------------------------------------------------------------ residual sites


def first(output: Any) -> torch.Tensor:
    """The hidden state of a module output that is a tensor or a tuple led by one."""
    return output[0] if isinstance(output, tuple) else output


def replace_first(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def hidden_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden-state argument of a decoder layer / attention call (positional or keyword)."""
    return args[0] if args else kwargs["hidden_states"]


def with_hidden_input(args: tuple[Any, ...], kwargs: dict[str, Any],
                      hidden: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def add_to_output(vector: VectorFn) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        hidden = first(output)
        return replace_first(output, hidden + vector(hidden))

    return hook


def add_to_input(vector: VectorFn) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden = hidden_input(args, kwargs)
        return with_hidden_input(args, kwargs, hidden + vector(hidden))

    return hook


def install_residual(arch: Architecture, entry: Entry, vector: VectorFn) -> list[RemovableHandle]:
    """Hooks for the residual sites and the two patches that reduce to them (full, skip_layer)."""
    layer, site = entry.layer, entry.site
    if site in ("resid_post", "skip_layer"):
        return [arch.layer(layer).register_forward_hook(add_to_output(vector))]
    if site in ("resid_pre", "full"):
        return [arch.layer(layer).register_forward_pre_hook(add_to_input(vector), with_kwargs=True)]
    if site == "attn_out":
        return [arch.attn(layer).register_forward_hook(add_to_output(vector))]
    if site == "ln1_out":
        return [arch.ln1(layer).register_forward_hook(add_to_output(vector)),
                arch.attn(layer).register_forward_hook(add_to_output(vector))]
    if site == "ln2_out":
        return [arch.ln2(layer).register_forward_hook(add_to_output(vector)),
                arch.mlp(layer).register_forward_hook(add_to_output(vector))]
    raise SiteError(f"{site!r} is not a residual site")
