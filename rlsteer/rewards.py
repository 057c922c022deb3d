"""The Math-Verify reward (docs/semantics.md#rewards): extraction, gold normalisation, and a process pool.

Extraction follows the authors: the last ``\\boxed{…}`` (else ``\\fbox{…}``) with brace matching for the
qwen-math / chat / plain templates, the last ``<answer>…</answer>`` for r1; no answer means a wrong answer.
The gold is parsed from ``\\boxed{answer}`` and ``verify(gold, prediction)`` is called gold first. Rewards
are ±1 by default (0/1 on request). For models that never box their answers (docs/semantics.md#rewards),
``extraction="number"`` takes the last number in the completion (as GSM8K graders do), and
``extraction="any"`` lets Math-Verify search the whole completion. Beware ``any`` on arithmetic: Math-Verify
evaluates expressions it finds, so a completion that merely restates the question ("2 + 7 is …") counts
as answering 9 — an RL policy learns that quickly; use ``number`` there.

Verification can hang (sympy on adversarial input), so :class:`RewardPool` runs it in worker processes
with a hard per-answer deadline: a worker past it is killed and replaced, and the answer counts as a
timeout. The pool itself, :class:`WorkerPool`, also runs reward functions from user code
(:mod:`rlsteer.reward_functions`). No signal-based timeouts are used anywhere (they misbehave outside the main thread).

Example:
    >>> last_boxed(r"so \\boxed{\\frac{1}{2}} and then \\boxed{3}.")
    '3'
    >>> math_reward(r"The answer is \\boxed{\\frac{1}{2}}", "0.5")
    1.0
    >>> math_reward("The answer is 1/2", "0.5")
    -1.0
    >>> last_number("2 + 7 is 9, or 1,000.5 minus 991.5")
    '991.5'
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Literal

from rlsteer.errors import RlsteerError
from rlsteer.templates import DEFAULT_TEMPLATE

Status = Literal["correct", "wrong", "no_answer", "parse_error", "timeout"]
Extraction = Literal["boxed", "number", "any"]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_E_NOTATION = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*[eE]\s*([-+]?\d+)\s*$")


class RewardError(RlsteerError):
    pass


# ------------------------------------------------------------------------------------------- extraction


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (else the last ``\\fbox{…}``), braces matched; None if absent/unbalanced."""
    for command in ("\\boxed", "\\fbox"):
        start = text.rfind(command)
        if start < 0:
            continue
        i = start + len(command)
        while i < len(text) and text[i] == " ":
            i += 1
        if i >= len(text) or text[i] != "{":
            return None
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1:j]
        return None
    return None


def last_answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>…</answer>`` (non-greedy, across lines), or None."""
    matches = _ANSWER_TAG.findall(text)
    return matches[-1] if matches else None


def last_number(text: str) -> str | None:
    """The last number in ``text`` (thousands separators dropped; ``-3``, ``2.5`` and ``3/4`` are numbers)."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def extract_answer(completion: str, template: str = DEFAULT_TEMPLATE, extraction: Extraction = "boxed") -> str | None:
    """The final answer a completion commits to: with ``extraction`` ``number`` its last number, else the last
    answer tag (r1 template) or the last box (``any`` verifies the whole completion, where Math-Verify too
    prefers a boxed answer; this is what it logs).

    Example:
        >>> text = "so \\\\boxed{4}, i.e. 5"
        >>> extract_answer(text, "qwen-math"), extract_answer(text, extraction="number")
        ('4', '5')
    """
    if extraction == "number":
        return last_number(completion)
    return last_answer_tag(completion) if template == "r1" else last_boxed(completion)


# ----------------------------------------------------------------------------------------------- golds


def normalise_gold(answer: str) -> str:
    """Rewrite answers Math-Verify misreads: e-notation ``4.5e33`` becomes ``4.5 \\times 10^{33}``.

    Applied to gold answers and to extracted predictions alike when asked (``normalize_scientific``):
    Math-Verify reads ``e`` as Euler's number. The authors' scorer does not rewrite, so by default neither
    does rlsteer (58 of MinervaMath's 272 golds are in e-notation; docs/semantics.md).
    """
    match = _E_NOTATION.match(answer)
    if match:
        return f"{match.group(1)} \\times 10^{{{int(match.group(2))}}}"
    return answer


def math_verify_module() -> Any:
    """Import math_verify with its "timeout disabled" warnings silenced: RewardPool enforces the deadline."""
    import math_verify

    for name in ("math_verify.grader", "math_verify.parser"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return math_verify


def gold_warnings(answer: str) -> list[str]:
    """Known ways a gold answer makes verification unreliable (empty list if none)."""
    parse = math_verify_module().parse

    parsed = parse("\\boxed{" + answer + "}", parsing_timeout=None)
    if not parsed:
        return ["gold does not parse; only an identical string can match"]
    warnings = []
    value = parsed[0]
    if not isinstance(value, str) and str(value) == "0" and not re.fullmatch(r"\s*[-+]?0*(\.0*)?\s*", answer):
        warnings.append("gold parses to 0, so a prediction of 0 verifies as correct")
    if all(isinstance(p, str) for p in parsed):
        warnings.append("gold parses only as a string; only an identical string can match")
    return warnings


# ---------------------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Task:
    """One answer to check (plain data, sent to worker processes)."""

    completion: str
    gold: str
    template: str = DEFAULT_TEMPLATE
    extraction: Extraction = "boxed"
    normalize_scientific: bool = False


def verify_task(task: Task) -> Status:
    """Check one answer in this process (no timeout of its own)."""
    mv = math_verify_module()
    parse, verify = mv.parse, mv.verify
    rewrite = normalise_gold if task.normalize_scientific else str

    if task.extraction == "any":
        prediction_text = task.completion
    else:
        answer = extract_answer(task.completion, task.template, task.extraction)
        if answer is None:
            return "no_answer"
        prediction_text = "\\boxed{" + rewrite(answer) + "}"
    try:
        gold = parse("\\boxed{" + rewrite(task.gold) + "}", parsing_timeout=None)
        prediction = parse(prediction_text, parsing_timeout=None)
    except Exception:  # noqa: BLE001 - any parser failure is a wrong answer, as in the reference
        return "parse_error"
    if not prediction:
        return "no_answer" if task.extraction == "any" else "parse_error"
    try:
        return "correct" if verify(gold, prediction, timeout_seconds=None) else "wrong"
    except Exception:  # noqa: BLE001
        return "parse_error"


def to_reward(status: Status, values: Literal["pm1", "zero_one"] = "pm1") -> float:
    if status == "correct":
        return 1.0
    return 0.0 if values == "zero_one" else -1.0


def math_reward(completion: str, gold: str, template: str = DEFAULT_TEMPLATE, *, extraction: Extraction = "boxed",
                values: Literal["pm1", "zero_one"] = "pm1", normalize_scientific: bool = False) -> float:
    """The reward of one completion, verified in this process (use :class:`RewardPool` for batches)."""
    return to_reward(verify_task(Task(completion, gold, template, extraction, normalize_scientific)), values)


@dataclass(frozen=True)
class RewardBatch:
    """Rewards of a batch, with how each answer was judged and the counts a trainer logs.

    ``components`` holds, for rewards that are a weighted sum of several functions, each function's own
    (unweighted) rewards by name (:mod:`rlsteer.reward_functions`); it is empty for Math-Verify.
    """

    rewards: tuple[float, ...]
    statuses: tuple[Status, ...]
    components: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict, compare=False)

    def count(self, status: Status) -> int:
        return sum(s == status for s in self.statuses)

    @property
    def timeouts(self) -> int:
        return self.count("timeout")

    @property
    def parse_failures(self) -> int:
        return self.count("parse_error")

    @property
    def missing_answers(self) -> int:
        return self.count("no_answer")


class WorkerPool:
    """Worker processes that answer one JSON line per task, each within a hard deadline; reuse it across calls.

    Workers are separate Python interpreters (``python -m rlsteer.verify_worker ARGS``) fed one JSON line per
    task, so the pool works from scripts and notebooks alike (no ``__main__`` guard needed) and a hung
    worker can simply be killed (and replaced).

    Args:
        workers: processes (at least 1).
        timeout_s: seconds one task may take; past it the worker is killed and replaced.
        args: the worker's arguments (see :mod:`rlsteer.verify_worker`).
        describe: what the workers run, for the error when one cannot start.
    """

    TIMEOUT: dict[str, Any] = {"timeout": True}  # the outcome of a task past its deadline
    DIED: dict[str, Any] = {"died": True}  # the outcome of a task whose worker exited

    def __init__(self, workers: int, timeout_s: float, args: Sequence[str], describe: str) -> None:
        if workers < 1 or timeout_s <= 0:
            raise RewardError("a worker pool needs workers >= 1 and timeout_s > 0")
        self.workers, self.timeout_s, self.args, self.describe = workers, timeout_s, tuple(args), describe
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self._procs:
            _stop(proc)
        self._procs = []

    def map(self, tasks: Sequence[dict[str, Any]],
            stop: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any] | None]:
        """Each task's reply (a dict), :attr:`TIMEOUT` or :attr:`DIED`, in order.

        When ``stop`` says yes to an outcome, no further task is started and the tasks still running are
        abandoned (their workers replaced): those and the unstarted ones come back as None.
        """
        while len(self._procs) < self.workers:
            self._procs.append(self._spawn())
        results: list[dict[str, Any] | None] = [None] * len(tasks)
        pending = list(range(len(tasks)))[::-1]
        busy: dict[int, tuple[int, float]] = {}  # worker slot → (task index, deadline)
        while pending or busy:
            for slot, proc in enumerate(self._procs):
                if slot not in busy and pending:
                    index = pending.pop()
                    _send(proc, tasks[index])
                    busy[slot] = (index, time.monotonic() + self.timeout_s)
            next_deadline = min(deadline for _, deadline in busy.values())
            ready = wait([self._procs[s].stdout for s in busy],  # type: ignore[misc]
                         timeout=max(0.0, next_deadline - time.monotonic()))
            for slot in list(busy):
                proc = self._procs[slot]
                index, deadline = busy[slot]
                if proc.stdout in ready:
                    line = proc.stdout.readline() if proc.stdout else b""
                    if line:
                        results[index] = json.loads(line)
                    else:  # the worker died: replace it
                        results[index] = self.DIED
                        self._replace(slot)
                    del busy[slot]
                elif time.monotonic() >= deadline:
                    results[index] = self.TIMEOUT
                    self._replace(slot)
                    del busy[slot]
                else:
                    continue
                if stop is not None and stop(results[index] or {}):
                    for other in busy:  # their replies would otherwise answer the next call's tasks
                        self._replace(other)
                    return results
        return results

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        # A session of its own: a Ctrl-C meant for rlsteer (the terminal sends it to the whole process group)
        # would otherwise kill the worker mid-answer, and the pool would score that answer a parse failure;
        # the pool stops its workers itself (close() and _replace()).
        proc = subprocess.Popen([sys.executable, "-m", "rlsteer.verify_worker", *self.args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, start_new_session=True)
        # Wait for the worker's imports before any deadline starts counting.
        ready = wait([proc.stdout], timeout=120)  # type: ignore[list-item]
        line = proc.stdout.readline() if ready and proc.stdout else b""
        if not line.startswith(b'{"ready"'):
            _stop(proc)
            raise RewardError(f"a worker process failed to start; check that {self.describe}")
        return proc

    def _replace(self, slot: int) -> None:
        _stop(self._procs[slot], kill=True)
        self._procs[slot] = self._spawn()


class RewardPool:
    """Verify answers in worker processes with a hard per-answer deadline; reuse it across steps.

    The workers (a :class:`WorkerPool`) start on the first batch; a worker past the deadline is killed and
    replaced, and its answer counts as a timeout.

    Args:
        workers: processes (0 verifies in this process, without a deadline).
        timeout_s: seconds one answer may take; past it the worker is killed and replaced.
        values: ``pm1`` (±1, the authors') or ``zero_one``.
        verify: ``"module:function"`` taking a :class:`Task` and returning a status (tests inject slow ones).

    Example:
        >>> with RewardPool(workers=1) as pool:
        ...     batch = pool.score([r"\\boxed{4}", r"\\boxed{5}", "no box"], ["4", "4", "4"])
        >>> batch.rewards, batch.missing_answers
        ((1.0, -1.0, -1.0), 1)
    """

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, *, values: Literal["pm1", "zero_one"] = "pm1",
                 verify: str = "rlsteer.rewards:verify_task") -> None:
        if workers < 0 or timeout_s <= 0:
            raise RewardError("RewardPool needs workers >= 0 and timeout_s > 0")
        self.workers, self.timeout_s, self.values, self.verify = workers, timeout_s, values, verify
        self._pool = WorkerPool(workers, timeout_s, [verify], f"math-verify is installed and that {verify!r} can "
                                "be imported") if workers > 0 else None

    @property
    def _procs(self) -> list[subprocess.Popen[bytes]]:
        return self._pool._procs if self._pool is not None else []

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def score(self, completions: Sequence[str], golds: Sequence[str], template: str = DEFAULT_TEMPLATE,
              extraction: Extraction = "boxed", *, normalize_scientific: bool = False) -> RewardBatch:
        """Rewards for ``completions`` against ``golds`` (same length), in order."""
        if len(completions) != len(golds):
            raise RewardError(f"{len(completions)} completions but {len(golds)} gold answers")
        tasks = [Task(c, g, template, extraction, normalize_scientific)
                 for c, g in zip(completions, golds, strict=True)]
        if self._pool is None:
            fn = resolve_function(self.verify)
            statuses: list[Status] = [fn(t) for t in tasks]
        else:
            statuses = [_status(outcome) for outcome in self._pool.map([dataclasses.asdict(t) for t in tasks])]
        return RewardBatch(tuple(to_reward(s, self.values) for s in statuses), tuple(statuses))


def _status(outcome: dict[str, Any] | None) -> Status:
    """A worker's outcome as a status: a timeout is a timeout, a dead worker a parse failure."""
    if outcome is None or outcome is WorkerPool.DIED:
        return "parse_error"
    if outcome is WorkerPool.TIMEOUT:
        return "timeout"
    status: Status = outcome["status"]
    return status


def _send(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert proc.stdin is not None  # always piped
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()


def _stop(proc: subprocess.Popen[bytes], kill: bool = False) -> None:
    if not kill:
        with contextlib.suppress(OSError, ValueError):  # the worker may already be gone
            assert proc.stdin is not None
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.close()


def resolve_function(path: str) -> Callable[[Task], Status]:
    module, _, name = path.partition(":")
    fn: Callable[[Task], Status] = getattr(importlib.import_module(module), name)
    return fn
