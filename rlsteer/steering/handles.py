"""The hook machinery under :func:`rlsteer.steer` and :func:`rlsteer.patch`: removable handles, the vectors as
hooks see them, and the hooks that add a vector to a module's input or output.

Every addition is out of place (gradients reach the vectors, never the frozen weights) and casts the fp32
vector to the hidden state's dtype where it is added.

Example:
    >>> import torch
    >>> from rlsteer import load_model
    >>> from rlsteer.architectures import architecture_of
    >>> model, tok = load_model("tiny-random-llama")
    >>> arch = architecture_of(model)
    >>> source = VectorSource({Entry("resid_post", 3): lambda: torch.ones(64)})
    >>> with SteeringHandle(install_residual(arch, Entry("resid_post", 3), source.fn(Entry("resid_post", 3)))):
    ...     logits = model(tok("2 + 2 =", return_tensors="pt").input_ids).logits
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from rlsteer.architectures import Architecture
from rlsteer.steering.sites import Entry, SiteError

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
