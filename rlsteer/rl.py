"""The RLOO objective as the authors implemented it (DESIGN §2, reference-semantics §2), as pure functions.

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

from typing import Literal

import torch
from torch import nn

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
        advantages: [S] (no gradient).
        total_tokens: generated tokens in the whole step, across all micro-batches and ranks, so that
            summing this loss over micro-batches gives the step's loss (one optimizer step per round).
    """
    if total_tokens <= 0:
        raise RlsteerError("the step generated no tokens; check max_new_tokens and the prompts' lengths")
    return -(advantages.detach().to(logprob_sums.dtype) * logprob_sums).sum() / total_tokens


def token_logprobs(model: nn.Module, sequences: list[tuple[tuple[int, ...], tuple[int, ...]]], *,
                   temperature: float = 1.0, pad_id: int = 0) -> list[torch.Tensor]:
    """Log-probs of each completion's tokens given its prompt, under the model's current hooks.

    Args:
        sequences: (prompt ids, completion ids) pairs, batched together with left padding.
        temperature: the generation temperature T_gen (log_softmax(logits / T), in fp32); 0 means 1.

    Returns one tensor [len(completion)] per sequence, differentiable w.r.t. any steering vectors.
    """
    device = next(model.parameters()).device
    lengths = [len(p) + len(c) for p, c in sequences]
    width = max(lengths)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)  # [S, width]
    mask = torch.zeros_like(ids)
    for i, (prompt, completion) in enumerate(sequences):
        ids[i, width - lengths[i]:] = torch.tensor(prompt + completion, device=device)
        mask[i, width - lengths[i]:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    longest = max(len(c) for _, c in sequences)
    # Logits only where completions are predicted: the last `longest + 1` positions (left padding).
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                   logits_to_keep=longest + 1).logits  # [S, longest + 1, vocab]
    scale = 1.0 / temperature if temperature > 0 else 1.0
    out = []
    for i, (_, completion) in enumerate(sequences):
        n = len(completion)
        if n == 0:
            out.append(logits.new_zeros(0, dtype=torch.float32))
            continue
        # position t predicts token t+1: the completion's n tokens are predicted by the n positions before them
        step_logits = logits[i, longest - n:longest]  # [n, vocab]
        step_logits = step_logits.to(torch.promote_types(step_logits.dtype, torch.float32)) * scale
        targets = ids[i, width - n:]
        out.append(step_logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0])
    return out
