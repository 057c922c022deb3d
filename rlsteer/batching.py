"""Batches for transformers forward passes, shared by the HF rollout backend and the RL loss pass.

Example:
    >>> ids, mask = left_pad([(5, 6, 7), (8,)], pad_id=0, device=torch.device("cpu"))
    >>> ids.tolist(), mask.tolist(), positions(mask).tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]], [[0, 1, 2], [0, 0, 0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def left_pad(rows: Sequence[Sequence[int]], pad_id: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, each [rows, width], with every row right-aligned (left padding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long, device=device)
        mask[i, width - len(row):] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids [rows, width] of a left-padded batch: 0 at each row's first real token (0 on padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def new_cache(model: nn.Module) -> Any:
    """An empty transformers KV cache for ``model``."""
    from transformers import DynamicCache

    config: Any = model.config
    try:
        return DynamicCache(config=config)
    except TypeError:  # older transformers
        return DynamicCache()
