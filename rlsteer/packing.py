"""Padding-free loss pass: the sequences of a micro-batch packed into one row.

A micro-batch of (prompt, completion) pairs becomes one row of tokens with per-sequence position ids, and
attention runs segment by segment, so no token attends across sequences and no padding is computed:

* unshared: one segment per sequence, ``prompt + completion[:-1]`` at positions 0…;
* shared prompts: one segment per distinct prompt (positions 0…P−1), then one segment per completion
  (``completion[:-1]`` at positions P…) that attends to its prompt's segment and causally to itself —
  the prompt is computed, and back-propagated through, once per micro-batch.

Attention is a transformers attention function (:data:`IMPLEMENTATION`, registered with
``AttentionInterface``) that the model uses inside :func:`packed_attention`; it runs torch's
``scaled_dot_product_attention`` on each segment with its keys, so every family that dispatches attention
through ``AttentionInterface`` (all supported ones) is packed the same way, on CPU and GPU, with the
model's own scaling, grouped KV heads and sliding window. Only the positions that predict a completion
token reach the LM head.

Micro-batches are chosen by a token budget (:func:`micro_batches`), counting what the packed row holds.

Example:
    >>> batch = pack([((1, 2, 3), (4, 5)), ((1, 2, 3), (6,))], share_prompts=True)
    >>> batch.input_ids.tolist(), batch.position_ids.tolist()
    ([[1, 2, 3, 4]], [[0, 1, 2, 3]])
    >>> [(s.start, s.end, s.context) for s in batch.segments]
    [(0, 3, None), (3, 4, (0, 3))]
    >>> batch.keep.tolist(), batch.targets  # logits at row positions 2 and 3; indices into them per sequence
    ([2, 3], ((0, 1), (0,)))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlsteer.errors import RlsteerError

IMPLEMENTATION = "rlsteer_packed"
SEGMENTS_KWARG = "rlsteer_segments"

Pair = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class Segment:
    """Row positions [start, end) attend causally to themselves and fully to ``context`` (a prompt's segment)."""

    start: int
    end: int
    context: tuple[int, int] | None = None


@dataclass(frozen=True)
class PackedBatch:
    """One packed row.

    Attributes:
        input_ids, position_ids: [1, T].
        segments: cover [0, T) in order.
        keep: [K] row positions whose logits are needed (each predicts at least one completion token).
        targets: per sequence, the indices into ``keep`` of the logits that predict its completion tokens.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: tuple[Segment, ...]
    keep: torch.Tensor
    targets: tuple[tuple[int, ...], ...]

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[1])


def pack(sequences: Sequence[Pair], *, share_prompts: bool = True, device: torch.device | str = "cpu") -> PackedBatch:
    """Pack (prompt ids, completion ids) pairs into one row (see the module docstring).

    With ``share_prompts`` every distinct prompt appears once, before its first completion; a completion's
    first token is predicted by its prompt's last position, shared by the prompt's completions.
    """
    ids: list[int] = []
    positions: list[int] = []
    segments: list[Segment] = []
    keep: list[int] = []
    where: dict[int, int] = {}  # row position → index into keep
    prompt_at: dict[tuple[int, ...], tuple[int, int]] = {}

    def kept(position: int) -> int:
        if position not in where:
            where[position] = len(keep)
            keep.append(position)
        return where[position]

    def append(tokens: Sequence[int], first_position: int, context: tuple[int, int] | None) -> int:
        start = len(ids)
        ids.extend(tokens)
        positions.extend(range(first_position, first_position + len(tokens)))
        segments.append(Segment(start, len(ids), context))
        return start

    targets: list[tuple[int, ...]] = []
    for prompt, completion in sequences:
        if not prompt:
            raise RlsteerError("a sequence has an empty prompt; every completion needs at least one prompt token")
        if not completion:
            targets.append(())
            continue
        if share_prompts:
            if prompt not in prompt_at:
                start = append(prompt, 0, None)
                prompt_at[prompt] = (start, start + len(prompt))
            context = prompt_at[prompt]
            first = kept(context[1] - 1)  # the prompt's last position predicts the first completion token
            start = append(completion[:-1], len(prompt), context) if len(completion) > 1 else len(ids)
            targets.append((first, *(kept(start + t) for t in range(len(completion) - 1))))
        else:
            start = append(prompt + completion[:-1], 0, None)
            targets.append(tuple(kept(start + len(prompt) - 1 + t) for t in range(len(completion))))
    if not ids:
        ids, positions = [0], [0]  # nothing to predict: a one-token row keeps the shapes valid
        segments.append(Segment(0, 1))

    def tensor(values: list[Any]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return PackedBatch(tensor([ids]), tensor([positions]), tuple(segments), tensor(keep), tuple(targets))


def pack_sequences(sequences: Sequence[Sequence[int]], device: torch.device | str = "cpu"
                   ) -> tuple[dict[str, Any], list[int]]:
    """Whole token sequences in one row, each its own segment: the model's keyword arguments (call it inside
    :func:`packed_attention`) and each sequence's first row position.

    Example:
        >>> kwargs, starts = pack_sequences([(5, 6, 7), (8, 9)])
        >>> kwargs["input_ids"].tolist(), kwargs["position_ids"].tolist(), starts
        ([[5, 6, 7, 8, 9]], [[0, 1, 2, 0, 1]], [0, 3])
    """
    starts, segments, at = [], [], 0
    for seq in sequences:
        starts.append(at)
        segments.append(Segment(at, at + len(seq)))
        at += len(seq)
    ids = torch.tensor([[t for seq in sequences for t in seq]], dtype=torch.long, device=device)
    positions = torch.tensor([[i for seq in sequences for i in range(len(seq))]], dtype=torch.long, device=device)
    return {"input_ids": ids, "position_ids": positions, "use_cache": False, SEGMENTS_KWARG: tuple(segments)}, starts


def packed_logits(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Logits [K, vocab] at ``batch.keep`` from one forward pass of the packed row."""
    if batch.keep.numel() == 0:
        hf: Any = model
        return torch.zeros(0, hf.get_output_embeddings().weight.shape[0], device=batch.input_ids.device)
    calls = _CALLS[0]
    with packed_attention(model):
        out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                    logits_to_keep=batch.keep, **{SEGMENTS_KWARG: batch.segments})
    if _CALLS[0] == calls:  # the model's attention ignored the packed implementation: it would mix sequences
        raise RlsteerError(f"{type(model).__name__} does not dispatch attention through transformers' "
                           "AttentionInterface, so it cannot run packed; set rl.pack=false")
    return out.logits[0]  # [K, vocab]


_CALLS = [0]  # packed attention calls so far (to detect a model that bypasses it)


@contextmanager
def packed_attention(model: nn.Module) -> Iterator[None]:
    """Inside the block the model's attention runs :func:`packed_attention_forward` (and needs the segments).

    Wrap the backward pass too when gradient checkpointing recomputes attention there.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, packed_attention_forward)
    config: Any = model.config
    previous = config._attn_implementation
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = previous


def packed_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             sliding_window: int | None = None, softcap: float | None = None,
                             **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of a packed row, segment by segment (a transformers ``AttentionInterface`` function).

    query [1, H, T, D], key/value [1, H_kv, T, D] → output [1, T, H, D].
    """
    _CALLS[0] += 1
    segments: tuple[Segment, ...] | None = kwargs.get(SEGMENTS_KWARG)
    if segments is None:
        raise RlsteerError("packed attention ran without segments; call the model through rlsteer.packing.pack / "
                           "packed_logits, or outside packed_attention()")
    if softcap is not None:
        raise RlsteerError("packed attention does not implement attention logit soft-capping; set rl.pack=false")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped KV heads: query head h reads KV head h // groups, as transformers' repeat_kv
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    outputs = []
    for seg in segments:
        q = query[:, :, seg.start:seg.end]  # [1, H, L, D]
        k, v = key[:, :, seg.start:seg.end], value[:, :, seg.start:seg.end]
        past = 0
        if seg.context is not None:
            a, b = seg.context
            past = b - a
            k = torch.cat([key[:, :, a:b], k], dim=2)  # [1, H, past + L, D]
            v = torch.cat([value[:, :, a:b], v], dim=2)
        length = seg.end - seg.start
        if past == 0 and (sliding_window is None or length <= sliding_window):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True)
        else:
            qpos = torch.arange(past, past + length, device=q.device)[:, None]  # [L, 1] position in the sequence
            kpos = torch.arange(past + length, device=q.device)[None, :]  # [1, past + L]
            mask = kpos <= qpos
            if sliding_window is not None:
                mask &= kpos > qpos - sliding_window
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
        outputs.append(out)
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


# ------------------------------------------------------------------------------------------ micro-batches


def row_tokens(sequences: Sequence[Pair], *, share_prompts: bool) -> int:
    """Tokens in the packed row of ``sequences`` (what the forward and backward passes compute).

    Example:
        >>> row_tokens([((1, 2, 3), (4, 5)), ((1, 2, 3), (6,))], share_prompts=True)
        4
    """
    seen: set[tuple[int, ...]] = set()
    return sum(_added_tokens(pair, seen, share_prompts) for pair in sequences)


def padded_tokens(sequences: Sequence[Pair], *, share_prompts: bool) -> int:
    """Token positions the padded path (``token_logprobs(pack=False)``) computes for one micro-batch:
    every sequence padded to the longest, or, sharing prompts, the distinct prompts padded to the longest
    prompt plus every completion padded to the longest completion.

    Example:
        >>> padded_tokens([((1, 2, 3), (4, 5)), ((1, 2, 3), (6,)), ((7,), (8, 9, 10))], share_prompts=True)
        12
    """
    prompts = {p for p, _ in sequences}
    if share_prompts and len(prompts) < len(sequences):
        longest_prompt = max(len(p) for p in prompts)
        longest_input = max(max(len(c) - 1, 0) for _, c in sequences)
        return len(prompts) * longest_prompt + (len(sequences) * longest_input if longest_input else 0)
    return len(sequences) * max(len(p) + len(c) for p, c in sequences)


def _added_tokens(pair: Pair, seen: set[tuple[int, ...]], share_prompts: bool) -> int:
    """Tokens ``pair`` adds to a row whose shared prompts are ``seen`` (updated)."""
    prompt, completion = pair
    if not completion:
        return 0
    if not share_prompts:
        return len(prompt) + len(completion) - 1
    new_prompt = prompt not in seen
    seen.add(prompt)
    return len(prompt) * new_prompt + len(completion) - 1


def micro_batches(sequences: Sequence[Pair], *, max_tokens: int | None, max_sequences: int | None = None,
                  share_prompts: bool = True) -> list[list[int]]:
    """Consecutive index groups whose packed rows hold at most ``max_tokens`` tokens and ``max_sequences``
    sequences (a sequence longer than the budget gets a micro-batch of its own). Order is kept, so the N
    samples of a prompt, which come together, share their prompt within a micro-batch.

    Example:
        >>> seqs = [((1, 2), (3, 4, 5))] * 3 + [((9,), (8, 7))]
        >>> micro_batches(seqs, max_tokens=8)  # rows of 2 + 2 + 2 + 2 and 1 + 1 tokens
        [[0, 1, 2], [3]]
        >>> micro_batches(seqs, max_tokens=8, max_sequences=2)
        [[0, 1], [2, 3]]
    """
    if max_tokens is not None and max_tokens < 1:
        raise RlsteerError(f"rl.micro_batch_tokens must be at least 1, got {max_tokens}")
    if max_sequences is not None and max_sequences < 1:
        raise RlsteerError(f"rl.micro_batch_size must be at least 1, got {max_sequences}")
    batches: list[list[int]] = []
    current: list[int] = []
    seen: set[tuple[int, ...]] = set()
    tokens = 0
    for i, pair in enumerate(sequences):
        trial = set(seen)
        added = _added_tokens(pair, trial, share_prompts)
        full = ((max_sequences is not None and len(current) + 1 > max_sequences)
                or (max_tokens is not None and tokens + added > max_tokens))
        if current and full:
            batches.append(current)
            current, trial, tokens = [], set(), 0
            added = _added_tokens(pair, trial, share_prompts)
        current.append(i)
        seen, tokens = trial, tokens + added
    if current:
        batches.append(current)
    return batches
