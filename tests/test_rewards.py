"""The Math-Verify reward: extraction edge cases, the verifier on every gold answer, hard timeouts."""

from __future__ import annotations

import json
import random
import time

import pytest

from rlsteer.data import packaged_text
from rlsteer.rewards import (
    RewardPool,
    Task,
    extract_answer,
    gold_warnings,
    last_answer_tag,
    last_boxed,
    math_reward,
    normalise_gold,
    verify_task,
)

SETS = ("aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench", "gsm8k", "math_train")


def golds(name: str) -> list[dict]:
    """The packaged set's records as they are in the file."""
    return [json.loads(line) for line in packaged_text(name).split("\n") if line.strip()]


@pytest.mark.parametrize(("text", "expected"), [
    (r"\boxed{42}", "42"),
    (r"first \boxed{1} then \boxed{2}", "2"),                      # several boxes: the last
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),         # nested braces
    (r"\boxed{x} and more text after the box.", "x"),               # text after the box
    (r"\fbox{7}", "7"),                                             # \fbox
    (r"\boxed {3}", "3"),                                           # a space before the brace
    (r"no box here", None),
    (r"\boxed{unbalanced {", None),                                 # unbalanced braces
    (r"\boxed{ok} \fbox{ignored}", "ok"),                           # \boxed wins over \fbox
    (r"\boxed 5", None),                                            # no brace: no answer
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_r1_answer_tags():
    text = "<think>maybe <answer>1</answer></think> <answer>\n 2 \n</answer> trailing"
    assert last_answer_tag(text) == "\n 2 \n"
    assert extract_answer(text, "r1") == "\n 2 \n"
    assert extract_answer(r"\boxed{9}", "r1") is None  # r1 reads only answer tags
    assert math_reward("<think>2+2</think> <answer>4</answer>", "4", template="r1") == 1.0
    assert math_reward("<think>2+2</think> <answer>5</answer>", "4", template="r1") == -1.0


def test_values_and_extraction_modes():
    assert math_reward(r"\boxed{4}", "4", values="zero_one") == 1.0
    assert math_reward(r"\boxed{5}", "4", values="zero_one") == 0.0
    assert math_reward("So the total is 4.", "4") == -1.0                 # boxed-only: no box, no reward
    assert math_reward("So the total is 4.", "4", extraction="any") == 1.0  # whole-completion mode
    assert verify_task(Task("nothing", "4")) == "no_answer"


def test_e_notation_golds():
    assert normalise_gold("4.5e33") == r"4.5 \times 10^{33}"
    assert normalise_gold("-3.83E-5") == r"-3.83 \times 10^{-5}"
    assert normalise_gold("12") == "12"
    norm = {"normalize_scientific": True}
    assert math_reward(r"\boxed{4.5 \times 10^{33}}", "4.5e33", **norm) == 1.0
    assert math_reward(r"\boxed{4.5e33}", "4.5e33", **norm) == 1.0
    assert math_reward(r"\boxed{4.6 \times 10^{33}}", "4.5e33", **norm) == -1.0
    # the authors' scorer (the default) does not rewrite: Math-Verify reads 4.5e33 as 4.5·e^33
    assert math_reward(r"\boxed{4.5 \times 10^{33}}", "4.5e33") == -1.0
    assert math_reward(r"\boxed{4.5e33}", "4.5e33") == 1.0


def test_degenerate_golds_are_flagged():
    rows = {r["id"]: r["answer"] for r in golds("olympiadbench")}
    for bad in ("1965", "1970"):
        assert any("parses to 0" in w for w in gold_warnings(rows[bad])), bad
    assert gold_warnings("0") == [] and gold_warnings("17") == []


def _sample(name: str, k: int) -> list[dict]:
    rows = golds(name)
    return random.Random(0).sample(rows, min(k, len(rows)))


@pytest.mark.parametrize("name", SETS)
def test_gold_answers_verify_against_themselves_sample(name):
    rows = _sample(name, 25)
    with RewardPool(workers=0) as pool:
        batch = pool.score([f"The answer is \\boxed{{{r['answer']}}}." for r in rows], [r["answer"] for r in rows])
    assert batch.rewards == (1.0,) * len(rows), [r["id"] for r, s in zip(rows, batch.statuses, strict=True)
                                                  if s != "correct"]


@pytest.mark.slow
def test_every_gold_answer_verifies_against_itself():
    with RewardPool(workers=2, timeout_s=30) as pool:
        for name in SETS:
            rows = golds(name)
            batch = pool.score([f"\\boxed{{{r['answer']}}}" for r in rows], [r["answer"] for r in rows])
            failed = [r["id"] for r, s in zip(rows, batch.statuses, strict=True) if s != "correct"]
            assert not failed, f"{name}: {failed[:10]}"


def test_answers_of_other_problems_are_rejected():
    integers = [r for name in ("aime24", "aime25", "amc23") for r in golds(name)]
    pairs = [(a, b) for a, b in zip(integers, integers[1:], strict=False) if a["answer"] != b["answer"]]
    with RewardPool(workers=0) as pool:
        batch = pool.score([f"\\boxed{{{b['answer']}}}" for _, b in pairs], [a["answer"] for a, _ in pairs])
    assert batch.rewards == (-1.0,) * len(pairs)
    rows = _sample("math500", 60)
    pairs = [(a, b) for a, b in zip(rows, rows[1:], strict=False) if a["answer"].strip() != b["answer"].strip()]
    with RewardPool(workers=0) as pool:
        batch = pool.score([f"\\boxed{{{b['answer']}}}" for _, b in pairs], [a["answer"] for a, _ in pairs])
    assert batch.count("correct") <= 1  # different strings can still be equal values, but rarely


def sleepy_verify(task: Task) -> str:
    """A verifier that hangs on the gold answer "hang" (imported by RewardPool workers)."""
    if task.gold == "hang":
        time.sleep(600)
    return verify_task(task)


def test_a_hanging_verification_is_killed_and_counted():
    with RewardPool(workers=2, timeout_s=1.0, verify="tests.test_rewards:sleepy_verify") as pool:
        pool.score([r"\boxed{1}"], ["1"])  # start the workers outside the timed part
        start = time.monotonic()
        batch = pool.score([r"\boxed{1}", r"\boxed{2}", r"\boxed{3}", "none"], ["hang", "2", "hang", "4"])
        elapsed = time.monotonic() - start
        assert batch.statuses == ("timeout", "correct", "timeout", "no_answer")
        assert batch.timeouts == 2 and batch.missing_answers == 1 and batch.rewards == (-1.0, 1.0, -1.0, -1.0)
        # killed, not waited for: far below the 600 s hang even on a loaded machine (no speed is asserted)
        assert elapsed < 120, f"hung verifications were not killed ({elapsed:.1f} s)"
        assert pool.score([r"\boxed{5}"], ["5"]).rewards == (1.0,)  # replaced workers keep working


def test_pool_matches_serial_scoring():
    completions = [r"\boxed{\frac{1}{2}}", r"\boxed{0.5}", r"\boxed{2}", "no", r"\boxed{x^2}", r"\boxed{\pi}"]
    gold = ["0.5", r"\frac12", "3", "1", "x^{2}", "3.14159"]
    with RewardPool(workers=0) as serial, RewardPool(workers=2) as pool:
        assert serial.score(completions, gold).statuses == pool.score(completions, gold).statuses


def test_number_extraction_takes_the_last_number_and_is_not_fooled_by_a_restated_question():
    from rlsteer.rewards import last_number

    assert last_number("2 + 7 = 9.") == "9" and last_number("no digits") is None
    assert last_number("total: 1,234.5 apples, then -3") == "-3" and last_number("half is 3/4") == "3/4"
    restated = "2 + 7 is a non-traditional environment designed to support resilience."
    assert math_reward(restated, "9", extraction="any") == 1.0  # Math-Verify evaluates the restated question
    assert math_reward(restated, "9", extraction="number") == -1.0  # the last number is 7
    assert math_reward("2 + 7 = 9, so the answer is 9.", "9", extraction="number") == 1.0
    assert math_reward("We get 1,000 apples", "1000", extraction="number") == 1.0
    assert math_reward("It is 0.5", "\\frac{1}{2}", extraction="number") == 1.0
