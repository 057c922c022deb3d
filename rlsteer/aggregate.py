"""Evaluation arithmetic (docs/semantics.md#evaluation), as pure functions over 0/1 correctness.

For one benchmark and one seed, with ``correct[p]`` the list of 0/1 outcomes of problem p's samples:

* first-sample accuracy: mean over problems of the first sample (pass@1 with one sample);
* avg@n: mean over problems of the mean over that problem's n samples;
* pass@k: the unbiased estimator 1 − C(n−c, k)/C(n, k) (Chen et al. 2021), averaged over problems.

The paper's headline is, per seed, the mean over the six benchmarks of avg@n (n = 32 for AIME24, AIME25
and AMC23, n = 1 elsewhere), then the mean ± population std (ddof 0) over seeds.

Example:
    >>> pass_at_k(n=4, c=1, k=2)
    0.5
    >>> scores([[1, 0, 0, 0], [1, 1, 1, 1]], ks=(1, 2))
    {'first': 1.0, 'avg': 0.625, 'pass@1': 0.625, 'pass@2': 0.75, 'n': 4, 'problems': 2}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from rlsteer.errors import RlsteerError

PAPER_BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct (k ≤ n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise RlsteerError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 − Π_{i=n−c+1..n} (1 − k/i): numerically stable form of 1 − C(n−c, k)/C(n, k)
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def scores(correct: Sequence[Sequence[float]], ks: Iterable[int] = (1,)) -> dict[str, float]:
    """First-sample accuracy, avg@n and pass@k (k ≤ n) for one benchmark and seed."""
    if not correct:
        raise RlsteerError("no problems to score")
    ns = {len(c) for c in correct}
    if len(ns) != 1 or 0 in ns:
        raise RlsteerError(f"every problem needs the same positive number of samples, got {sorted(ns)}")
    n = ns.pop()
    out: dict[str, float] = {
        "first": _mean(float(c[0] > 0) for c in correct),
        "avg": _mean(_mean(float(x > 0) for x in c) for c in correct),
    }
    for k in sorted(set(ks)):
        if k <= n:
            out[f"pass@{k}"] = _mean(pass_at_k(n, sum(x > 0 for x in c), k) for c in correct)
    out["n"] = n
    out["problems"] = len(correct)
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof = 0), as numpy's default ``std``."""
    if not values:
        raise RlsteerError("no values to aggregate")
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def headline(per_seed: Mapping[int, Mapping[str, float]],
             benchmarks: Sequence[str] = PAPER_BENCHMARKS) -> tuple[float, float, dict[int, float]]:
    """The paper's Average: per seed the mean of avg@n over ``benchmarks``, then mean ± std over seeds.

    Args:
        per_seed: seed → benchmark → avg@n (a fraction in [0, 1]).

    Returns (mean, std, per-seed averages). Seeds missing a benchmark are an error.
    """
    averages = {}
    for seed, bench in per_seed.items():
        missing = [b for b in benchmarks if b not in bench]
        if missing:
            raise RlsteerError(f"seed {seed} has no results for {', '.join(missing)}; evaluate them or pass "
                               "the benchmarks to average over")
        averages[seed] = _mean(bench[b] for b in benchmarks)
    mean, std = mean_std(list(averages.values()))
    return mean, std, averages


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items)
