"""What scores a training step's completions: Math-Verify (the paper), reward functions from user code, or the
smoke run's first-token check.

A scorer turns rollouts and their problems into a :class:`rlsteer.rewards.RewardBatch` (one reward and
status per completion) and holds whatever it needs (a verifier pool) until ``close()``. Evaluation scores
with the same :class:`FunctionScorer` as training when the reward comes from user code.

Example:
    >>> from rlsteer.rollout import Request, Rollout
    >>> scorer = FirstTokenScorer(target_id=7, values="pm1")
    >>> rollouts = [Rollout(Request((1,), (2,)), (7, 2), "", "stop"), Rollout(Request((1,), (2,)), (3,), "", "length")]
    >>> scorer.score(rollouts, []).rewards
    (1.0, -1.0)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from rlsteer.config import RewardFunctionsSection, RewardSection, TrainConfig, load_config
from rlsteer.data import Problem
from rlsteer.errors import RlsteerError
from rlsteer.reward_functions import RewardFunctions
from rlsteer.rewards import RewardBatch, RewardPool, Status
from rlsteer.rollout import Rollout
from rlsteer.rundir import RunDir
from rlsteer.templates import Prompt
from rlsteer.usercode import looks_like_function


class ScorerError(RlsteerError):
    pass


class Scorer(Protocol):
    def score(self, rollouts: Sequence[Rollout], problems: Sequence[Problem]) -> RewardBatch: ...

    def close(self) -> None: ...


class MathScorer:
    """Math-Verify rewards through a reusable :class:`RewardPool`."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.pool = RewardPool(cfg.reward.worker_count(functions=False), cfg.reward.timeout_s,
                               values=cfg.reward.values)

    def score(self, rollouts: Sequence[Rollout], problems: Sequence[Problem]) -> RewardBatch:
        return self.pool.score([r.text for r in rollouts], golds(problems), self.cfg.data.template,
                               self.cfg.reward.extraction, normalize_scientific=self.cfg.reward.normalize_scientific)

    def close(self) -> None:
        self.pool.close()


def golds(problems: Sequence[Problem]) -> list[str]:
    """The gold answers Math-Verify checks against; a problem without one is an error."""
    missing = [p.id for p in problems if p.answer is None]
    if missing:
        raise ScorerError(f"problem {missing[0]} has no gold answer, which Math-Verify needs; set answer_field to "
                          "the dataset's answer column, or score with reward functions (reward.kind=python)")
    return [str(p.answer) for p in problems]


class FunctionScorer:
    """The weighted sum of reward functions from user code (``reward.kind: python``; ``rlsteer eval --reward``).

    Training and evaluation build it from the same ``reward.*`` section and call the same :meth:`score`, so
    both agree on every completion's reward. The functions see each completion's text without the stop token
    that ended it (``<|im_end|>``, EOS; as TRL passes completions). A completion whose total is above
    ``success_above`` counts as ``correct`` (training accuracy, evaluation's success rates); each function's
    own rewards are in the batch's ``components``.

    Example:
        >>> from rlsteer.rollout import Request
        >>> scorer = FunctionScorer(RewardFunctionsSection(function="rlsteer.examples.json_reply:json_shape"))
        >>> problem = Problem("0", "What is 3 + 4?", "7", "toy", {"key": "sum"})
        >>> request = Request((1,), (2,))
        >>> batch = scorer.score([Rollout(request, (), t, "stop") for t in ('{"sum": 7}', "7")], [problem] * 2)
        >>> batch.rewards, batch.statuses, batch.components
        ((1.0, 0.0), ('correct', 'wrong'), {'json_shape': (1.0, 0.0)})
    """

    def __init__(self, section: RewardFunctionsSection, tokenizer: Any = None) -> None:
        self.functions = RewardFunctions(section.entries(), section.worker_count(functions=True), section.timeout_s)
        self.success_above = section.success_above
        self.tokenizer = tokenizer

    def completion(self, rollout: Rollout) -> str:
        """The text a reward function sees: the completion without the stop token that ended it."""
        ids, stops = rollout.token_ids, rollout.request.stop_ids
        if self.tokenizer is None or rollout.finish_reason != "stop" or not ids or ids[-1] not in stops:
            return rollout.text
        end = self.tokenizer.decode([ids[-1]], skip_special_tokens=False)
        return rollout.text.removesuffix(end)

    def score(self, rollouts: Sequence[Rollout], problems: Sequence[Problem]) -> RewardBatch:
        columns = list(dict.fromkeys(k for p in problems for k in p.meta))  # every column any row has
        totals, parts = self.functions.score(
            [self.completion(r) for r in rollouts], problems=[p.problem for p in problems],
            answers=[p.answer for p in problems], fields={k: [p.meta.get(k) for p in problems] for k in columns})
        statuses: tuple[Status, ...] = tuple("correct" if t > self.success_above else "wrong" for t in totals)
        return RewardBatch(tuple(totals), statuses, {name: tuple(v) for name, v in parts.items()})

    def record(self) -> dict[str, Any]:
        """The functions (spec, file sha256, weight, name) and the success threshold, for protocol.json."""
        return {"functions": self.functions.record(), "success_above": self.success_above}

    def close(self) -> None:
        self.functions.close()


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


def reward_overrides(source: str) -> list[str]:
    """``rlsteer eval --reward SOURCE`` as config overrides: a function (``package.module:fn``, ``file.py:fn``),
    or a training config, preset or run directory whose reward functions (weights and success threshold
    included) then score the evaluation exactly as they scored training.

    Example:
        >>> reward_overrides("my_rewards.py:fn")
        ['reward.function=my_rewards.py:fn']
        >>> reward_overrides("json-cpu")[1]
        'reward.success_above=0.5'
    """
    path = Path(source).expanduser()
    if looks_like_function(source) and not path.is_dir():
        return [f"reward.function={source}"]
    config = RunDir(path).config if path.is_dir() else path
    if path.is_dir() and not config.is_file():
        raise ScorerError(f"--reward {source}: a folder without config.yaml; give a run directory, a training config "
                          "or a function package.module:fn")
    reward = load_config(TrainConfig, config).reward
    if reward.kind != "python":
        raise ScorerError(f"--reward {source}: its reward.kind is {reward.kind}, not python; give a config or run "
                          "trained with reward functions, or a function package.module:fn")
    return training_reward_overrides(reward)


def training_reward_overrides(reward: RewardSection) -> list[str]:
    """Evaluation overrides that score with a training config's reward functions (``reward.kind=python``):
    the same functions, weights and success threshold."""
    terms = [asdict(f) for f in reward.functions] or [{"function": reward.function, "weight": 1.0, "name": None}]
    return [f"reward.functions={json.dumps(terms)}", f"reward.success_above={reward.success_above!r}"]


def make_scorer(cfg: TrainConfig, model: nn.Module, tok: Any, prompts: Sequence[Prompt]) -> Scorer:
    if cfg.reward.kind == "math":
        if cfg.data.answer_field is None:
            raise ScorerError("reward.kind=math checks answers against gold ones, but data.answer_field is null; name "
                              "the answer column, or score with reward functions (reward.kind=python)")
        return MathScorer(cfg)
    if cfg.reward.kind == "python":
        return FunctionScorer(cfg.reward, tok)
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
