"""Answers verified per second: in-process (serial) vs RewardPool workers, on MATH500 gold answers.

Run:  .venv/bin/python bench/bench_rewards.py [--data DIR] [--repeat 2]   (default: the packaged MATH500)

Half of the predictions are the problem's own gold answer (correct), half the next problem's (mostly
wrong), so both verify paths are timed. All configurations run side by side in one process.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from rlsteer.data import load_problems
from rlsteer.rewards import RewardPool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a folder with math500.jsonl (default: $RLSTEER_DATA_DIR, else packaged)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    golds = [p.answer for p in load_problems("math500", data_dir=args.data)]
    preds = [f"The answer is \\boxed{{{golds[i] if i % 2 == 0 else golds[(i + 1) % len(golds)]}}}."
             for i in range(len(golds))]
    results = []
    for workers in (0, 1, 2):
        with RewardPool(workers=workers, timeout_s=30) as pool:
            pool.score(preds[:4], golds[:4])  # start workers, warm imports
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                batch = pool.score(preds, golds)
                best = min(best, time.perf_counter() - start)
            results.append((workers, len(preds) / best, batch.count("correct")))
    serial = results[0][1]
    print(f"MATH500 golds, {len(preds)} answers, best of {args.repeat}; {os.cpu_count()} CPUs, "
          f"{platform.python_version()}\n")
    print("| verifier | answers/s | × serial | correct |")
    print("|---|---:|---:|---:|")
    for workers, rate, correct in results:
        label = "in-process (serial)" if workers == 0 else f"RewardPool, {workers} worker{'s' * (workers > 1)}"
        print(f"| {label} | {rate:.0f} | {rate / serial:.2f} | {correct} |")


if __name__ == "__main__":
    main()
