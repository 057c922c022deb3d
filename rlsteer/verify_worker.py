"""A worker process of :class:`rlsteer.rewards.WorkerPool` (one JSON line in, one out).

Two kinds, both printing ``{"ready": true}`` once their imports are done:

* ``python -m rlsteer.verify_worker MODULE:FUNCTION`` verifies math answers: each task line
  ``{"completion", "gold", "template", "extraction"}`` is answered with ``{"status": …}``;
* ``python -m rlsteer.verify_worker --reward SPEC`` runs a user reward function on one completion at a time:
  each line ``{"completion", "problem", "answer", "fields"}`` is answered with ``{"reward": x}`` or
  ``{"error": what went wrong}`` (:func:`rlsteer.reward_functions.call_one`).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main(args: list[str]) -> None:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # what user code prints must not mix with the replies
    answer: Any
    if args[:1] == ["--reward"]:
        from rlsteer.reward_functions import call_one
        from rlsteer.usercode import load_function

        fn = load_function(args[1], what="reward function")

        def answer(task: dict[str, Any]) -> dict[str, Any]:
            return call_one(fn.call, task)
    else:
        from rlsteer.rewards import Task, math_verify_module, resolve_function

        verify = resolve_function(args[0] if args else "rlsteer.rewards:verify_task")
        math_verify_module()

        def answer(task: dict[str, Any]) -> dict[str, Any]:
            try:
                return {"status": verify(Task(**task))}
            except Exception:  # noqa: BLE001 - a crash on one answer is a parse failure, not a dead worker
                return {"status": "parse_error"}
    out.write(b'{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        out.write(json.dumps(answer(json.loads(line))).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
