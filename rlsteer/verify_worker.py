"""A verification worker process for :class:`rlsteer.rewards.RewardPool` (one JSON line in, one out).

Run as ``python -m rlsteer.verify_worker MODULE:FUNCTION``; it prints ``{"ready": true}`` once imported,
then answers each task line ``{"completion", "gold", "template", "extraction"}`` with ``{"status": …}``.
"""

from __future__ import annotations

import json
import sys

from rlsteer.rewards import Task, math_verify_module, resolve_function


def main(verify: str) -> None:
    fn = resolve_function(verify)
    math_verify_module()
    out = sys.stdout.buffer
    out.write(b'{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        try:
            status = fn(Task(**json.loads(line)))
        except Exception:  # noqa: BLE001 - a crash on one answer is a parse failure, not a dead worker
            status = "parse_error"
        out.write(json.dumps({"status": status}).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "rlsteer.rewards:verify_task")
