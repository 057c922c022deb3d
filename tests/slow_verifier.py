"""A verifier that hangs on one gold answer, for RewardPool timeout tests (imported by worker processes, so it
imports nothing heavy)."""

from __future__ import annotations

import time

from rlsteer.rewards import Status, Task, verify_task


def verify_or_hang(task: Task) -> Status:
    """Never returns for the gold answer "HANG" (the pool must kill the worker); else the real verifier."""
    if task.gold == "HANG":
        time.sleep(600)
    return verify_task(task)
