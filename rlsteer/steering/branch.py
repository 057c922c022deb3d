"""Attention-branch patches: a vector moved to the input of block ℓ, with parts of the block kept vanilla.

Semantics follow the authors' code (docs/semantics.md#patching): with X the vanilla residual
entering block ℓ, U = LN1(X) and U_s = LN1(X + s),

* ``skip_attn``   attention reads U; the residual carries X + s.
* ``steer_q/k/v`` attention reads U except one head's Q (query head) or K/V (KV head) slice, projected
  from U_s before RoPE; the spliced K/V enter the normal KV cache. Residual X + s.
* ``steer_head``  per-query-head attention outputs (before o_proj) are vanilla except the chosen heads,
  taken from a fully steered attention (Q, K, V from U_s) that keeps its own KV cache.
* ``skip_head``   the reverse: fully steered except the chosen heads, which are vanilla. Residual X + s.
* ``full`` (≡ ``resid_pre``) and ``skip_layer`` (≡ ``resid_post``) need no branch (:mod:`.handles`).

:func:`install_branch_patch` installs one; :func:`rlsteer.steer` and :func:`rlsteer.patch` call it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from rlsteer.architectures import Architecture
from rlsteer.errors import RlsteerError
from rlsteer.steering.handles import VectorFn, first, hidden_input, replace_first, with_hidden_input
from rlsteer.steering.sites import SiteError, head_limit


class PatchError(RlsteerError):
    pass


class _BranchCache:
    """The steered branch's own KV cache for one layer (duck-types ``Cache.update`` for attention)."""

    def __init__(self) -> None:
        self.key: torch.Tensor | None = None  # [batch, kv_heads, pos, head_dim]
        self.value: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.key is None else self.key.shape[-2]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.key is None or self.value is None:
            self.key, self.value = key, value
        else:
            self.key = torch.cat([self.key, key], dim=-2)
            self.value = torch.cat([self.value, value], dim=-2)
        return self.key, self.value

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def reorder(self, rows: torch.Tensor) -> None:
        """Follow the model's cache when it picks or repeats rows (``Cache.reorder_cache``): several samples
        of one prompt start from that prompt's cache."""
        if self.key is not None and self.value is not None:
            self.key = self.key.index_select(0, rows.to(self.key.device))
            self.value = self.value.index_select(0, rows.to(self.value.device))


def _follow_reorders(main: Any, branch: _BranchCache) -> None:
    """Make ``main.reorder_cache(rows)`` reorder ``branch`` too (every branch cache made for this main cache)."""
    followers: list[_BranchCache] | None = getattr(main, "_rlsteer_branch_caches", None)
    if followers is None:
        followers = []
        reorder = main.reorder_cache

        def reorder_all(rows: torch.Tensor) -> None:
            reorder(rows)
            for cache in followers:
                cache.reorder(rows)

        main.reorder_cache = reorder_all
        main._rlsteer_branch_caches = followers
    followers.append(branch)


@dataclass
class _BranchState:
    """What one forward pass of the patched block passes between its hooks."""

    x: torch.Tensor | None = None             # [batch, pos, d_model] vanilla residual X
    u_steered: torch.Tensor | None = None     # [batch, pos, d_model] LN1(X + s)
    steered_heads: torch.Tensor | None = None  # [batch, pos, n_heads * head_dim] steered pre-o_proj
    capturing: bool = False
    cache_owner: Callable[[], Any] | None = None
    cache: _BranchCache | None = None

    def clear(self) -> None:
        self.x = self.u_steered = self.steered_heads = None

    def branch_cache(self, main: Any, layer: int) -> _BranchCache | None:
        """A cache for the steered branch that mirrors the model's own ``main`` cache."""
        if main is None:
            return None
        past = int(main.get_seq_length(layer))
        owner = self.cache_owner() if self.cache_owner is not None else None
        if owner is not main or past == 0 or self.cache is None:
            self.cache_owner, self.cache = weakref.ref(main), _BranchCache()
            _follow_reorders(main, self.cache)
        if self.cache.length != past:
            raise PatchError(f"head patch at layer {layer}: the model's KV cache holds {past} positions but "
                             f"the steered branch's holds {self.cache.length}; cache cropping and reuse across "
                             "prompts are not supported with head patches")
        return self.cache


def install_branch_patch(arch: Architecture, layer: int, site: str, heads: tuple[int, ...],
                         vector: VectorFn) -> list[RemovableHandle]:
    """Install the hooks of one attention-branch patch (see the module docstring)."""
    check_heads(arch, site, heads)
    state = _BranchState()

    def on_block_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x = hidden_input(args, kwargs)
        state.x = x
        return with_hidden_input(args, kwargs, x + vector(x))  # the residual carries X + s

    def on_block_output(module: nn.Module, args: Any, output: Any) -> None:
        state.clear()

    def on_ln1(module: nn.Module, args: Any, output: Any) -> Any:
        state.u_steered = first(output)  # LN1 saw X + s
        return replace_first(output, module.forward(state.x))  # attention reads the vanilla LN1(X)

    handles = [
        arch.layer(layer).register_forward_pre_hook(on_block_input, with_kwargs=True),
        arch.layer(layer).register_forward_hook(on_block_output),
        arch.ln1(layer).register_forward_hook(on_ln1),
    ]
    if site in ("steer_q", "steer_k", "steer_v"):
        handles.append(_splice_projection(arch, layer, site[-1], heads, state))
    elif site in ("steer_head", "skip_head"):
        handles += _splice_heads(arch, layer, site, heads, state)
    return handles


def _splice_projection(arch: Architecture, layer: int, stream: str, heads: tuple[int, ...],
                       state: _BranchState) -> RemovableHandle:
    proj = arch.projection(layer, stream)
    columns = [proj.columns(h) for h in heads]

    def hook(module: nn.Linear, args: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()  # [batch, pos, out_features]
        for cols in columns:
            bias = None if module.bias is None else module.bias[cols]
            out[..., cols] = F.linear(_ready(state.u_steered), module.weight[cols], bias)
        return out

    return proj.module.register_forward_hook(hook)


def _splice_heads(arch: Architecture, layer: int, site: str, heads: tuple[int, ...],
                  state: _BranchState) -> list[RemovableHandle]:
    columns = [slice(h * arch.head_dim, (h + 1) * arch.head_dim) for h in heads]

    def run_steered_branch(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cache = state.branch_cache(kwargs.get("past_key_values"), layer)
        branch_args, branch_kwargs = with_hidden_input(args, {**kwargs, "past_key_values": cache},
                                                       _ready(state.u_steered))
        state.capturing = True
        try:
            module.forward(*branch_args, **branch_kwargs)  # .forward: the attention's own hooks stay out
        finally:
            state.capturing = False

    def on_o_proj_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
        heads_out = args[0]  # [batch, pos, n_heads * head_dim]
        if state.capturing:
            state.steered_heads = heads_out
            return None
        steered = _ready(state.steered_heads)
        base, donor = (heads_out, steered) if site == "steer_head" else (steered, heads_out)
        out = base.clone()
        for cols in columns:
            out[..., cols] = donor[..., cols]
        return (out, *args[1:])

    return [arch.attn(layer).register_forward_pre_hook(run_steered_branch, with_kwargs=True),
            arch.o_proj(layer).register_forward_pre_hook(on_o_proj_input)]


def _ready(tensor: torch.Tensor | None) -> torch.Tensor:
    if tensor is None:  # a hook ran outside the block's forward pass
        raise PatchError("patched attention ran outside its decoder layer's forward pass")
    return tensor


def check_heads(arch: Architecture, site: str, heads: tuple[int, ...]) -> None:
    """Raise :class:`SiteError` unless ``heads`` suit ``site`` (none for skip_attn, in range, distinct)."""
    if site == "skip_attn":
        if heads:
            raise SiteError("skip_attn takes no heads")
        return
    if not heads:
        raise SiteError(f"{site} needs at least one head")
    limit, kind = head_limit(site, arch.n_heads, arch.n_kv_heads)
    for h in heads:
        if not 0 <= h < limit:
            raise SiteError(f"{site}: head {h} is out of range, the model has {limit} {kind} (0..{limit - 1})")
    if len(set(heads)) != len(heads):
        raise SiteError(f"{site}: repeated head indices {list(heads)}")
