"""Next-token sampling with one random generator per row (pure functions).

Example:
    >>> import torch
    >>> logits = torch.tensor([[0.0, 5.0, 1.0]])
    >>> next_tokens(logits, SamplingParams(temperature=0.0), [torch.Generator()])[0].tolist()
    [1]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlsteer.rollout.base import SamplingParams


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. logits: [batch, vocab] fp32."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [batch, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (the first token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, params: SamplingParams,
                generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; returns (tokens [batch], log-probs [batch] under softmax(logits / T)).

    Row i draws from ``generators[i]`` only, so its sample does not depend on the other rows.
    """
    logits = logits.float()  # [batch, vocab]
    if params.greedy:
        tokens = logits.argmax(-1)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    scaled = logits / params.temperature
    logprobs = scaled.log_softmax(-1)  # the untruncated policy, as the loss sees it
    probs = filter_logits(scaled, params.top_k, params.top_p).softmax(-1)
    # Inverse-CDF sampling with one uniform draw per row from that row's generator: exact, and far cheaper
    # than a multinomial call per row.
    uniform = torch.stack([torch.rand((), generator=gen, device=probs.device) for gen in generators])  # [batch]
    cdf = probs.cumsum(-1)  # [batch, vocab]
    target = (uniform * cdf[:, -1])[:, None]
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0].clamp(max=probs.shape[-1] - 1)
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]
