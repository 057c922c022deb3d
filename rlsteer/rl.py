"""The RLOO objective as the authors implemented it (docs/semantics.md#objective), as pure functions.

Per optimizer step: B prompts × N samples from the current steered policy; rewards r [B, N];
leave-one-out advantages a = r − mean(other N−1 rewards); and the loss

    L = − Σ_{p,k} a_{p,k} · Σ_t log π(y_{p,k,t}) / T_step,   T_step = generated tokens in the step (all ranks)

with log π from an fp32 log-softmax of logits / T_gen. No KL, ratio, clipping or entropy term.

Example:
    >>> import torch
    >>> advantages(torch.tensor([[1.0, -1.0, -1.0, -1.0]]))
    tensor([[ 2.0000, -0.6667, -0.6667, -0.6667]])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from rlsteer.batching import left_pad, new_cache, positions
from rlsteer.errors import RlsteerError

Baseline = Literal["loo", "mean", "group_std"]


def advantages(rewards: torch.Tensor, baseline: Baseline = "loo", eps: float = 1e-6) -> torch.Tensor:
    """Advantages [B, N] from rewards [B, N] (one row per prompt group).

    * ``loo`` (default, the authors' code): r − (Σ_j r_j − r) / (N − 1) = N/(N−1) · (r − r̄).
    * ``mean`` (the paper's text): r − r̄.
    * ``group_std`` (GRPO): (r − r̄) / (std(r) + eps), population std over the group.

    A group whose rewards are all equal gets zero advantage everywhere.
    """
    if rewards.ndim != 2:
        raise RlsteerError(f"rewards must be [prompts, samples], got shape {tuple(rewards.shape)}")
    n = rewards.shape[1]
    r = rewards.float()
    mean = r.mean(dim=1, keepdim=True)  # [B, 1]
    if baseline == "loo":
        if n < 2:
            raise RlsteerError("leave-one-out advantages need at least 2 samples per prompt; "
                               "set samples_per_prompt >= 2")
        return r - (r.sum(dim=1, keepdim=True) - r) / (n - 1)
    if baseline == "mean":
        return r - mean
    if baseline == "group_std":
        return (r - mean) / (r.std(dim=1, unbiased=False, keepdim=True) + eps)
    raise RlsteerError(f"unknown baseline {baseline!r}; use loo, mean or group_std")


def policy_loss(logprob_sums: torch.Tensor, advantages: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """−Σ a · Σ_t log π / total_tokens for a (micro-)batch of sequences.

    Args:
        logprob_sums: [S] per-sequence sums of the generated tokens' log-probs (differentiable).
        advantages: [S] (no gradient), on any device: moved to ``logprob_sums``' device and dtype.
        total_tokens: generated tokens in the whole step, across all micro-batches and ranks, so that
            summing this loss over micro-batches gives the step's loss (one optimizer step per round).
    """
    if total_tokens <= 0:
        raise RlsteerError("the step generated no tokens; check max_new_tokens and the prompts' lengths")
    # the advantages come from the rewards, on the CPU; the log-probs live on the model's device
    return -(advantages.detach().to(logprob_sums) * logprob_sums).sum() / total_tokens


def token_logprobs(model: nn.Module, sequences: list[tuple[tuple[int, ...], tuple[int, ...]]], *,
                   temperature: float = 1.0, pad_id: int = 0, share_prompts: bool = True,
                   pack: bool = False) -> list[torch.Tensor]:
    """Log-probs of each completion's tokens given its prompt, under the model's current hooks.

    Args:
        sequences: (prompt ids, completion ids) pairs.
        temperature: the generation temperature T_gen (log_softmax(logits / T), in fp32); 0 means 1.
        share_prompts: run each distinct prompt once and the completions on top of it (the N samples of an
            RLOO group share one prompt, so the prompt is processed, and back-propagated through, once
            instead of N times). Equal to the unshared computation up to float rounding.
        pack: one row with no padding (:mod:`rlsteer.packing`): per-sequence positions, attention that
            stays inside each sequence (and its shared prompt), logits only where completion tokens are
            predicted. Without it the sequences are padded to the longest, and shared prompts use a KV cache.
            The same log-probs either way, up to float rounding.

    Returns one tensor [len(completion)] per sequence, differentiable w.r.t. any steering vectors.

    Example:
        >>> from rlsteer import load_model
        >>> model, tok = load_model("tiny-random-llama")
        >>> seqs = [((1, 2, 3), (4, 5)), ((1, 2, 3), (6,))]
        >>> [lp.shape[0] for lp in token_logprobs(model, seqs)]
        [2, 1]
    """
    scale = 1.0 / temperature if temperature > 0 else 1.0
    if pack:
        return _packed_logprobs(model, sequences, share_prompts, scale)
    prompts = list(dict.fromkeys(p for p, _ in sequences))
    if share_prompts and len(prompts) < len(sequences):
        logits = _shared_prompt_logits(model, sequences, prompts, pad_id)
    else:
        logits = _flat_logits(model, sequences, pad_id)
    out = []
    for step_logits, (_, completion) in zip(logits, sequences, strict=True):
        if not completion:
            out.append(step_logits.new_zeros(0, dtype=torch.float32))
            continue
        step_logits = step_logits.to(torch.promote_types(step_logits.dtype, torch.float32)) * scale
        targets = torch.tensor(completion, device=step_logits.device)
        out.append(step_logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0])
    return out


def _packed_logprobs(model: nn.Module, sequences: list[tuple[tuple[int, ...], tuple[int, ...]]],
                     share_prompts: bool, scale: float) -> list[torch.Tensor]:
    """:func:`token_logprobs` from one packed row: one log-softmax over the kept positions and one gather
    (per-sequence slices of the [K, vocab] logits would each cost a [K, vocab] zero-fill in backward)."""
    from rlsteer.packing import IMPLEMENTATION, pack, packed_logits

    hf: Any = model
    if getattr(hf, "is_gradient_checkpointing", False) and hf.config._attn_implementation != IMPLEMENTATION:
        raise RlsteerError("packed log-probs under gradient checkpointing recompute attention in the backward "
                           "pass; run the forward and the backward inside rlsteer.packing.packed_attention(model)")
    device = next(model.parameters()).device
    batch = pack(sequences, share_prompts=share_prompts, device=device)
    logits = packed_logits(model, batch)  # [K, vocab]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if scale != 1.0:
        logits = logits * scale
    rows = torch.tensor([k for t in batch.targets for k in t], dtype=torch.long, device=device)  # [N]
    tokens = torch.tensor([t for _, c in sequences for t in c], dtype=torch.long, device=device)  # [N]
    values = logits.log_softmax(-1)[rows, tokens]  # [N]: every completion token of every sequence
    return list(values.split([len(c) for _, c in sequences]))


def _flat_logits(model: nn.Module, sequences: list[tuple[tuple[int, ...], tuple[int, ...]]],
                 pad_id: int) -> list[torch.Tensor]:
    """Per sequence the logits [n, vocab] that predict its n completion tokens: one pass over prompt + completion."""
    device = next(model.parameters()).device
    ids, mask = left_pad([p + c for p, c in sequences], pad_id, device)  # [S, width]
    longest = max(len(c) for _, c in sequences)
    # Logits only where completions are predicted: the last `longest + 1` positions (left padding).
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False,
                   logits_to_keep=longest + 1).logits  # [S, longest + 1, vocab]
    # position t predicts token t+1: the completion's n tokens are predicted by the n positions before them
    return [logits[i, longest - len(c):longest] for i, (_, c) in enumerate(sequences)]


def _shared_prompt_logits(model: nn.Module, sequences: list[tuple[tuple[int, ...], tuple[int, ...]]],
                          prompts: list[tuple[int, ...]], pad_id: int) -> list[torch.Tensor]:
    """As :func:`_flat_logits`, with each distinct prompt run once and its KV cache shared by its completions."""
    device = next(model.parameters()).device
    index = {p: g for g, p in enumerate(prompts)}
    rows = torch.tensor([index[p] for p, _ in sequences], device=device)  # [S]: the prompt of each sequence
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)  # [G, P]
    cache = new_cache(model)
    first = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                  position_ids=positions(prompt_mask), past_key_values=cache, use_cache=True,
                  logits_to_keep=1).logits[:, -1]  # [G, vocab]: predicts each completion's first token
    inputs = [c[:-1] for _, c in sequences]  # a completion's last token is only a target
    width = max(len(x) for x in inputs)
    if width == 0:
        return [first[rows[i]][None][: len(c)] for i, (_, c) in enumerate(sequences)]
    cache.reorder_cache(rows)  # [G, …] → [S, …]
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)  # [S, T], right-padded
    completion_mask = torch.zeros_like(ids)
    for i, x in enumerate(inputs):
        ids[i, :len(x)] = torch.tensor(x, dtype=torch.long, device=device)
        completion_mask[i, :len(x)] = 1
    starts = torch.tensor([len(p) for p, _ in sequences], device=device)
    completion_positions = starts[:, None] + torch.arange(width, device=device)  # [S, T]
    logits = model(input_ids=ids, attention_mask=torch.cat([prompt_mask[rows], completion_mask], dim=1),
                   position_ids=completion_positions, past_key_values=cache, use_cache=True).logits  # [S, T, vocab]
    return [torch.cat([first[rows[i]][None], logits[i, :len(c) - 1]]) if c else first[:0]
            for i, (_, c) in enumerate(sequences)]


@contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Recompute each decoder layer's activations in the backward pass instead of storing them.

    transformers checkpoints only in training mode, so the model is put in training mode inside the block
    (non-reentrant checkpointing, which replays the steering hooks and reaches the vectors' gradients);
    models with dropout are refused, since training mode would turn it on.

    Example:
        >>> from rlsteer import load_model
        >>> model, _ = load_model("tiny-random-llama")
        >>> with gradient_checkpointing(model):
        ...     model.training
        True
    """
    if not enabled:
        yield
        return
    config: Any = model.config
    rates = {k: getattr(config, k, 0.0) or 0.0 for k in ("attention_dropout", "hidden_dropout", "resid_pdrop",
                                                            "embd_pdrop", "attn_pdrop", "dropout")}
    rates.update({name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)})
    if any(float(v) > 0 for v in rates.values()):
        raise RlsteerError(f"gradient checkpointing runs the model in training mode, which would turn on its dropout "
                           f"({', '.join(k for k, v in rates.items() if float(v) > 0)}); set them to 0 in the "
                           "model config or train without rl.gradient_checkpointing")
    was_training = model.training
    hf: Any = model  # a transformers PreTrainedModel
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    try:
        yield
    finally:
        hf.gradient_checkpointing_disable()
        model.train(was_training)


def masked_advantages(rewards: torch.Tensor, keep: torch.Tensor, baseline: Any) -> torch.Tensor:
    """Advantages [B, N] over the kept samples of each group; dropped samples get 0 and leave the baseline."""
    if bool(keep.all()):
        return advantages(rewards, baseline)
    out = torch.zeros_like(rewards, dtype=torch.float32)
    for g in range(rewards.shape[0]):
        kept = keep[g].nonzero().flatten()
        if len(kept) >= 2:
            out[g, kept] = advantages(rewards[g, kept][None], baseline)[0]
    return out


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The lr multiplier of (0-based) ``step`` under transformers' ``constant_with_warmup`` schedule, which the
    authors use: step / W during the W warmup steps, so the first update has lr 0, then 1.

    Example:
        >>> [warmup_factor(k, 4) for k in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
