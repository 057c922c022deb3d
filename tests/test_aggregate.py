"""Evaluation arithmetic against brute force and a hand-computed multi-seed example."""

from __future__ import annotations

import itertools
import math

import pytest

from rlsteer.aggregate import PAPER_BENCHMARKS, headline, mean_std, pass_at_k, scores
from rlsteer.errors import RlsteerError


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_brute_force_enumeration(n):
    for c in range(n + 1):
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_scores_table():
    correct = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]]
    s = scores(correct, ks=(1, 2, 4, 8))
    assert s["first"] == pytest.approx(1 / 3)
    assert s["avg"] == pytest.approx((0.25 + 0 + 0.5) / 3)
    assert s["pass@1"] == pytest.approx(s["avg"])  # pass@1 over n samples is avg@n
    assert s["pass@2"] == pytest.approx((0.5 + 0 + 5 / 6) / 3)
    assert s["pass@4"] == pytest.approx(2 / 3)
    assert "pass@8" not in s and s["n"] == 4 and s["problems"] == 3
    with pytest.raises(RlsteerError, match="same positive number of samples"):
        scores([[1], [1, 0]])


def test_headline_over_three_seeds_by_hand():
    # avg@n per benchmark for seeds 0, 1, 2 (fractions)
    per_seed = {
        0: dict(zip(PAPER_BENCHMARKS, [0.10, 0.05, 0.40, 0.70, 0.30, 0.35], strict=True)),
        1: dict(zip(PAPER_BENCHMARKS, [0.20, 0.05, 0.45, 0.72, 0.28, 0.33], strict=True)),
        2: dict(zip(PAPER_BENCHMARKS, [0.10, 0.10, 0.35, 0.68, 0.32, 0.37], strict=True)),
    }
    mean, std, averages = headline(per_seed)
    expected = {0: 1.90 / 6, 1: 2.03 / 6, 2: 1.92 / 6}
    assert averages == pytest.approx(expected)
    m = sum(expected.values()) / 3
    assert mean == pytest.approx(m)
    assert std == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in expected.values()) / 3))  # ddof = 0
    with pytest.raises(RlsteerError, match="seed 0 has no results for aime24"):
        headline({0: {"math500": 0.5}})


def test_mean_std_is_population_std():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
