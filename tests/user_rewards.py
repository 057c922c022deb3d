"""Reward functions as users write them, good and bad, for tests (imported by worker processes too, so this
imports nothing heavy). Each bad one misbehaves only on completions containing a trigger word."""

from __future__ import annotations

import math
import time

CALLS: list[dict] = []  # what `recording` was called with


def length(completions, **_):
    """Reward = number of characters / 10 (no gold needed)."""
    return [len(c) / 10 for c in completions]


def says_answer(completions, *, answers, **_):
    """1 when the gold answer appears in the completion, else 0."""
    return [float(a is not None and a in c) for c, a in zip(completions, answers, strict=True)]


def recording(completions, *, problems, answers, **fields):
    CALLS.append({"completions": completions, "problems": problems, "answers": answers, "fields": fields})
    return [1.0] * len(completions)


def labelled(completions, *, label, **_):
    """1 when the completion starts with the row's label (a dataset column)."""
    return [float(c.strip().startswith(lab)) for c, lab in zip(completions, label, strict=True)]


def nan_on_bad(completions, **_):
    return [math.nan if "bad" in c else 1.0 for c in completions]


def inf_on_bad(completions, **_):
    return [-math.inf if "bad" in c else 1.0 for c in completions]


def string_on_bad(completions, **_):
    return ["great" if "bad" in c else 1.0 for c in completions]


def none_on_bad(completions, **_):
    return [None if "bad" in c else 1.0 for c in completions]


def one_short(completions, **_):
    return [1.0] * (len(completions) - 1)


def a_string(completions, **_):
    return "1.0"


def raises_on_bad(completions, **_):
    return [1.0 / (0 if "bad" in c else 1) for c in completions]


def raises_on_the_batch(completions, **_):
    if len(completions) > 1:
        raise RuntimeError("batches are not supported")
    return [1.0]


def hangs_on_bad(completions, **_):
    if any("bad" in c for c in completions):
        time.sleep(600)
    return [1.0] * len(completions)


def exits_on_bad(completions, **_):
    if any("bad" in c for c in completions):
        import os

        os._exit(3)
    return [1.0] * len(completions)


def prints(completions, **_):
    print("debug output that must not reach the pool's pipe")
    return [2.0] * len(completions)


STEP = {"calls": 0}


def fails_on_second_call(completions, **_):
    """Fine the first time, NaN from the second call on (a run's second step)."""
    STEP["calls"] += 1
    return [1.0 if STEP["calls"] < 2 else math.nan for _ in completions]


def hangs(completions, **_):
    time.sleep(600)
    return [1.0] * len(completions)


def slow_or_bad(completions, **_):
    """Raises on "bad", takes 2 s and gives 5 on "slow", else 1."""
    if any("bad" in c for c in completions):
        raise ValueError("bad")
    if any("slow" in c for c in completions):
        time.sleep(2)
        return [5.0] * len(completions)
    return [1.0] * len(completions)
