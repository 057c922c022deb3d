"""A worked example beyond math: reply in a requested JSON shape (the ``json-cpu`` preset; README "Your own task").

Each problem asks for a one-digit sum and a reply in JSON with one requested key, e.g. ``What is 3 + 4?
Reply in JSON with the key "sum".`` The key differs from row to row and sits in a column of its own
(``key``), which reaches the reward functions as a keyword list, as every extra dataset column does:

* :func:`json_shape`: 1 when the reply is a JSON object with exactly the requested key and nothing else (a
  ```json fence around it is fine), else 0;
* :func:`json_answer`: 1 when, moreover, that key holds the right sum (a number, or a string of one), else 0.

SmolLM2-135M-Instruct, greedy, gets the shape right on about one problem in five (it wraps the number in
other objects, picks other keys, or keeps talking after the object); an all-layer steering vector trained
with RLOO on ``json_shape + 0.5 · json_answer`` makes it the rule within a few minutes on a CPU.

Example:
    >>> json_shape(['```json\\n{"sum": 7}\\n```', '{"answer": 7}', '{"sum": 7} as asked', 'seven'], key=["sum"] * 4)
    [1.0, 0.0, 0.0, 0.0]
    >>> json_answer(['{"sum": "7"}', '{"sum": 8}'], answers=["7", "7"], key=["sum", "sum"])
    [1.0, 0.0]
    >>> held_out_rows()[0]["problem"]
    'What is 6 + 1? Reply in JSON with the key "result".'
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

KEYS = ("answer", "sum", "result", "total", "value")
PROMPT = 'What is {a} + {b}? Reply in JSON with the key "{key}".'
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def _rows() -> list[dict[str, Any]]:
    """Every (a, b, key) combination once, in a fixed shuffled order: 405 rows."""
    rows = [{"problem": PROMPT.format(a=a, b=b, key=key), "answer": str(a + b), "key": key}
            for a in range(1, 10) for b in range(1, 10) for key in KEYS]
    random.Random(0).shuffle(rows)
    return rows


def training_rows() -> list[dict[str, Any]]:
    """The first 320 rows (the training problems)."""
    return _rows()[:320]


def held_out_rows() -> list[dict[str, Any]]:
    """The other 85 rows: held-out problems for evaluation."""
    return _rows()[320:]


def reply_object(text: str) -> dict[str, Any] | None:
    """The JSON object the whole reply is (inside a ```json fence or not), or None."""
    text = text.strip()
    fenced = _FENCE.fullmatch(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def json_shape(completions: Sequence[str], *, key: Sequence[str], **_: Any) -> list[float]:
    """1.0 where the reply is a JSON object with exactly the requested key (and nothing else), else 0.0."""
    out = []
    for text, wanted in zip(completions, key, strict=True):
        obj = reply_object(text)
        out.append(float(obj is not None and list(obj) == [wanted]))
    return out


def json_answer(completions: Sequence[str], *, answers: Sequence[str | None], key: Sequence[str],
                **_: Any) -> list[float]:
    """1.0 where the reply has the requested shape and its key holds the gold sum, else 0.0."""
    out = []
    for text, gold, wanted in zip(completions, answers, key, strict=True):
        obj = reply_object(text)
        value = obj[wanted] if obj is not None and list(obj) == [wanted] else None
        out.append(float(gold is not None and _same_number(value, gold)))
    return out


def _same_number(value: Any, gold: str) -> bool:
    """Whether ``value`` (a number, or a string holding one) equals the number ``gold``."""
    if value is None or isinstance(value, (bool, dict, list)):
        return False
    try:
        return float(str(value).strip()) == float(gold)
    except ValueError:
        return False
