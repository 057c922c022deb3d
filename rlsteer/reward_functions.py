"""Rewards from user code: TRL-style reward functions, batched, checked, optionally in worker processes.

A reward function is named ``package.module:function`` or ``path/to/file.py:function``
(:mod:`rlsteer.usercode`) and called as ::

    fn(completions: list[str], *, problems: list[str], answers: list[str | None], **fields) -> list[float]

with one entry per completion in every list: the completion's text (without the stop token that ended it:
:class:`rlsteer.scorers.FunctionScorer` passes it so), its problem, its gold answer (None for datasets
without one) and, as keyword lists named after them, the dataset's other columns (TRL passes
dataset columns the same way). It returns one finite number per completion (ints and bools count).

Anything else stops the step with one line naming the function, what it did and, where one can be named,
the completion it did it on: a non-list, the wrong length, a string, None, NaN or inf; an exception (the
batch is then retried one completion at a time to find the one that raises); in a worker pool, a call that
takes longer than the deadline or kills its process. Nothing of a step is applied before its rewards are in.

Several functions make a weighted sum: ``reward = Σ weight_i · f_i``; each function's own rewards are kept
by name (``components``), so the trainer can log them one by one.

Where the functions run (``reward.workers``): 0, the default, calls each function once per batch in this
process (no deadline: a function that hangs, hangs the run); ``workers`` > 0 calls it once per completion
in that many worker processes, each call within ``reward.timeout_s`` (past it the worker is killed and the
step stops with an error naming the completion). In workers the function sees batches of one, so it must
not depend on the rest of the batch.

Example:
    >>> rf = RewardFunctions([("rlsteer.examples.json_reply:json_shape", 1.0, None)])
    >>> totals, parts = rf.score(['{"answer": 7}', 'seven'], problems=["3 + 4?"] * 2, answers=["7", "7"],
    ...                          fields={"key": ["answer", "answer"]})
    >>> totals, parts
    ([1.0, 0.0], {'json_shape': [1.0, 0.0]})
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlsteer.errors import RlsteerError, first_line
from rlsteer.rewards import WorkerPool
from rlsteer.usercode import UserFunction, load_function

#: the keyword arguments every reward function receives; dataset columns may not take these names
RESERVED = ("completions", "problems", "answers")


class RewardFunctionError(RlsteerError):
    pass


class RewardCallError(RewardFunctionError):
    """A reward function misbehaved on a batch (raised, hung, returned something other than finite numbers)."""


@dataclass(frozen=True)
class Weighted:
    """One term of the reward: a loaded function, its weight and the name its rewards are logged under."""

    fn: UserFunction
    weight: float
    name: str


class BadResult(Exception):
    """What a call did wrong (``what``), and on which completion (``index``) when that is known."""

    def __init__(self, what: str, index: int | None = None) -> None:
        super().__init__(what)
        self.what, self.index = what, index


def check_rewards(result: Any, n: int) -> list[float]:
    """``result`` as ``n`` finite floats, else :class:`BadResult` saying what is wrong with it.

    Example:
        >>> check_rewards([1, True, 0.5], 3)
        [1.0, 1.0, 0.5]
        >>> check_rewards([1.0, float("nan")], 2)
        Traceback (most recent call last):
        ...
        rlsteer.reward_functions.BadResult: returned nan
    """
    if hasattr(result, "tolist") and not isinstance(result, (str, bytes)):  # numpy arrays, torch tensors
        result = result.tolist()
    if not isinstance(result, (list, tuple)):
        raise BadResult(f"returned {_kind(result)}, not a list of {n} numbers")
    if len(result) != n:
        raise BadResult(f"returned {len(result)} rewards for {n} completions")
    values = []
    for i, value in enumerate(result):
        if not isinstance(value, numbers.Real):
            raise BadResult(f"returned {_short(value)} ({_kind(value)})", i)
        number = float(value)
        if not math.isfinite(number):
            raise BadResult(f"returned {number}", i)
        values.append(number)
    return values


def call_one(fn: Any, task: Mapping[str, Any]) -> dict[str, Any]:
    """One completion through ``fn`` (a batch of one), as a worker answers it: ``{"reward": x}`` or
    ``{"error": what}``."""
    try:
        result = fn([task["completion"]], problems=[task["problem"]], answers=[task["answer"]],
                    **{k: [v] for k, v in task["fields"].items()})
    except Exception as err:  # noqa: BLE001 - the user's code failed: report it, keep the worker
        return {"error": _raised(err)}
    try:
        return {"reward": check_rewards(result, 1)[0]}
    except BadResult as bad:
        return {"error": bad.what}


class RewardFunctions:
    """The weighted sum of user reward functions, called in this process or in worker processes.

    Args:
        entries: ``(spec, weight, name)`` per function; ``name`` None takes the function's own name.
        workers: 0 calls each function on the whole batch here; > 0 per completion in worker processes.
        timeout_s: with workers, seconds one completion may take.
    """

    def __init__(self, entries: Sequence[tuple[str, float, str | None]], workers: int = 0,
                 timeout_s: float = 5.0) -> None:
        if not entries:
            raise RewardFunctionError("no reward function given; set reward.function (or reward.functions)")
        terms = []
        for spec, weight, name in entries:
            fn = load_function(spec, what="reward function")
            if not math.isfinite(weight):
                raise RewardFunctionError(f"reward function {spec!r} has weight {weight}; give a finite number")
            terms.append(Weighted(fn, float(weight), name or fn.name))
        names = [t.name for t in terms]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise RewardFunctionError(f"two reward functions are named {twice[0]!r}; give one of them a name "
                                      "(reward.functions: [{function: …, weight: …, name: …}])")
        self.terms = tuple(terms)
        if workers < 0 or timeout_s <= 0:
            raise RewardFunctionError(f"reward.workers={workers} and reward.timeout_s={timeout_s}: workers must be "
                                      ">= 0 and timeout_s > 0")
        self.workers, self.timeout_s = workers, timeout_s
        self._pools: dict[str, WorkerPool] = {}

    def __enter__(self) -> RewardFunctions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools = {}

    def record(self) -> list[dict[str, Any]]:
        """Each function's identity (spec, and a file's path and sha256), weight and name, for the record."""
        return [{**t.fn.record(), "weight": t.weight, "name": t.name} for t in self.terms]

    def score(self, completions: Sequence[str], *, problems: Sequence[str], answers: Sequence[str | None],
              fields: Mapping[str, Sequence[Any]]) -> tuple[list[float], dict[str, list[float]]]:
        """The total reward of each completion, and each function's own rewards by name."""
        n = len(completions)
        lengths = {"problems": len(problems), "answers": len(answers), **{k: len(v) for k, v in fields.items()}}
        wrong = {k: m for k, m in lengths.items() if m != n}
        if wrong:
            raise RewardFunctionError(f"{n} completions but {wrong}; pass one entry per completion")
        clash = [k for k in fields if k in RESERVED]
        if clash:
            raise RewardFunctionError(f"the dataset column {clash[0]!r} has the name of a reward function argument "
                                      f"({', '.join(RESERVED)}); rename the column")
        parts = {}
        for term in self.terms:
            run = self._in_workers if self.workers > 0 else self._in_process
            parts[term.name] = run(term, list(completions), list(problems), list(answers),
                                   {k: list(v) for k, v in fields.items()})
        totals = [math.fsum(t.weight * parts[t.name][i] for t in self.terms) for i in range(n)]
        return totals, parts

    def _in_process(self, term: Weighted, completions: list[str], problems: list[str], answers: list[str | None],
                    fields: dict[str, list[Any]]) -> list[float]:
        try:
            result = term.fn.call(completions, problems=problems, answers=answers, **fields)
        except Exception as err:  # noqa: BLE001 - the user's code failed: name it, and the completion
            what = _raised(err)
            for i in range(len(completions)):  # which completion makes it raise?
                outcome = call_one(term.fn.call, _task(i, completions, problems, answers, fields))
                if "error" in outcome:
                    raise self._error(term, outcome["error"], i, completions) from None
            raise self._error(term, f"{what} on the batch of {len(completions)} completions (on none of them "
                              "alone)", None, completions) from None
        try:
            return check_rewards(result, len(completions))
        except BadResult as bad:
            raise self._error(term, bad.what, bad.index, completions) from None

    def _in_workers(self, term: Weighted, completions: list[str], problems: list[str], answers: list[str | None],
                    fields: dict[str, list[Any]]) -> list[float]:
        pool = self._pools.get(term.name)
        if pool is None:
            pool = self._pools[term.name] = WorkerPool(
                self.workers, self.timeout_s, ["--reward", term.fn.spec],
                f"{term.fn.spec!r} can be imported in a fresh Python process")
        tasks = [_task(i, completions, problems, answers, fields) for i in range(len(completions))]
        try:
            json.dumps(fields)
        except (TypeError, ValueError) as err:  # checked before any task is sent
            raise RewardFunctionError(f"reward.workers > 0 sends the dataset's columns to the workers as JSON, and "
                                      f"{first_line(err)}; use reward.workers=0 for this dataset") from None
        outcomes = pool.map(tasks, stop=lambda o: "reward" not in o)
        for i, outcome in enumerate(outcomes):
            if outcome is WorkerPool.TIMEOUT:
                raise self._error(term, f"took longer than reward.timeout_s={self.timeout_s:g} s", i, completions,
                                  "make it faster, or raise reward.timeout_s")
            if outcome is WorkerPool.DIED:
                raise self._error(term, "ended its worker process", i, completions, "fix the function")
            if outcome is not None and "error" in outcome:
                raise self._error(term, str(outcome["error"]), i, completions)
        return [float(o["reward"]) for o in outcomes if o is not None]

    def _error(self, term: Weighted, what: str, index: int | None, completions: Sequence[str],
               fix: str | None = None) -> RewardCallError:
        where = (f" on completion {index + 1} of {len(completions)} ({_short(completions[index], 120)})"
                 if index is not None else "")
        if fix is None:
            fix = "fix the function" if what.startswith("raised") else "return one finite number per completion"
        return RewardCallError(f"reward function {term.name} ({term.fn.spec}) {what}{where}; {fix}")


def _task(i: int, completions: list[str], problems: list[str], answers: list[str | None],
          fields: dict[str, list[Any]]) -> dict[str, Any]:
    return {"completion": completions[i], "problem": problems[i], "answer": answers[i],
            "fields": {k: v[i] for k, v in fields.items()}}


def _raised(err: BaseException) -> str:
    return f"raised {type(err).__name__}: {first_line(err)}" if str(err).strip() else f"raised {type(err).__name__}"


def _kind(value: Any) -> str:
    name = type(value).__name__
    return "None" if value is None else f"a{'n' if name[:1] in 'aeiou' else ''} {name}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]
