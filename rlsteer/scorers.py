"""What scores a training step's completions: Math-Verify (the paper) or the smoke run's first-token check.

A scorer turns rollouts and their problems into a :class:`rlsteer.rewards.RewardBatch` (one reward and
status per completion) and holds whatever it needs (a verifier pool) until ``close()``.

Example:
    >>> from rlsteer.rollout import Request, Rollout
    >>> scorer = FirstTokenScorer(target_id=7, values="pm1")
    >>> rollouts = [Rollout(Request((1,), (2,)), (7, 2), "", "stop"), Rollout(Request((1,), (2,)), (3,), "", "length")]
    >>> scorer.score(rollouts, []).rewards
    (1.0, -1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from rlsteer.config import TrainConfig
from rlsteer.data import Problem
from rlsteer.errors import RlsteerError
from rlsteer.rewards import RewardBatch, RewardPool, Status
from rlsteer.rollout import Rollout
from rlsteer.templates import Prompt


class ScorerError(RlsteerError):
    pass


class Scorer(Protocol):
    def score(self, rollouts: Sequence[Rollout], problems: Sequence[Problem]) -> RewardBatch: ...

    def close(self) -> None: ...


class MathScorer:
    """Math-Verify rewards through a reusable :class:`RewardPool`."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.pool = RewardPool(cfg.reward.workers, cfg.reward.timeout_s, values=cfg.reward.values)

    def score(self, rollouts: Sequence[Rollout], problems: Sequence[Problem]) -> RewardBatch:
        return self.pool.score([r.text for r in rollouts], [p.answer for p in problems], self.cfg.data.template,
                               self.cfg.reward.extraction, normalize_scientific=self.cfg.reward.normalize_scientific)

    def close(self) -> None:
        self.pool.close()


class FirstTokenScorer:
    """+1 when the first generated token is the target (the smoke-test task), else −1 (or 0)."""

    def __init__(self, target_id: int, values: str) -> None:
        self.target_id, self.values = target_id, values

    def score(self, rollouts: Sequence[Rollout], problems: Sequence[Problem]) -> RewardBatch:
        hit = [bool(r.token_ids) and r.token_ids[0] == self.target_id for r in rollouts]
        statuses: tuple[Status, ...] = tuple("correct" if h else "wrong" for h in hit)
        miss = 0.0 if self.values == "zero_one" else -1.0
        return RewardBatch(tuple(1.0 if h else miss for h in hit), statuses)

    def close(self) -> None:
        pass


def make_scorer(cfg: TrainConfig, model: nn.Module, tok: Any, prompts: Sequence[Prompt]) -> Scorer:
    if cfg.reward.kind == "math":
        return MathScorer(cfg)
    target = cfg.reward.target
    if target is None:
        raise ScorerError("reward.kind=first_token needs reward.target (a token, or auto)")
    if target == "auto":
        target_id = auto_target(model, prompts[: cfg.rl.prompts_per_step], cfg.rollout.temperature)
    else:
        ids = tok.encode(target, add_special_tokens=False)
        if len(ids) != 1:
            raise ScorerError(f"reward.target {target!r} is {len(ids)} tokens; give a single token")
        target_id = ids[0]
    return FirstTokenScorer(target_id, cfg.reward.values)


@torch.no_grad()
def auto_target(model: nn.Module, prompts: Sequence[Prompt], temperature: float) -> int:
    """The base model's second most likely first token, averaged over ``prompts``."""
    scale = 1.0 / temperature if temperature > 0 else 1.0
    probs = torch.stack([(model(torch.tensor([p.ids], device=next(model.parameters()).device)).logits[0, -1]
                          .float() * scale).softmax(-1) for p in prompts]).mean(0)
    return int(probs.topk(2).indices[1])
