"""Dataset registry, local files with bad rows, synthetic tasks."""

from __future__ import annotations

import json

import pytest

from rlsteer.data import (
    EVAL_SETS,
    REGISTRY,
    DataError,
    data_origin,
    load_problems,
    packaged_manifest,
    packaged_text,
    synthetic_arithmetic,
)
from rlsteer.rewards import math_reward
from tests.conftest import shared_data_dir

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(not (DATA / "math500.jsonl").is_file(),
                                reason=f"shared data not found at {DATA} (set RLSTEER_SHARED_DATA)")
SIZES = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva_math": 272, "olympiadbench": 675,
         "gsm8k": 1319, "math_train": 7498}


@pytest.mark.parametrize("name", list(SIZES))
def test_registry_reads_the_packaged_sets_offline(name, monkeypatch):
    monkeypatch.delenv("RLSTEER_DATA_DIR", raising=False)
    problems = load_problems(name)
    assert len(problems) == SIZES[name] == packaged_manifest()[name]["problems"]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.problem.strip() and p.answer.strip() and p.source == name for p in problems)
    assert data_origin(name)["packaged"] == f"{REGISTRY[name].file}.gz"


def test_the_manifest_covers_the_paper_benchmarks_with_provenance():
    manifest = packaged_manifest()
    assert set(manifest) == {"aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench", "gsm8k",
                             "math_train"}
    for entry in manifest.values():
        assert entry["upstream"] and entry["licence"] and entry["dataset"] and len(entry["sha256"]) == 64


@needs_data
@pytest.mark.parametrize("name", list(SIZES))
def test_packaged_sets_are_the_shared_files_byte_for_byte(name):
    text = (DATA / REGISTRY[name].file).read_text(encoding="utf-8")
    assert packaged_text(name) == text
    assert load_problems(name, data_dir=DATA) == load_problems(name, data_dir="/nonexistent")
    assert data_origin(name, DATA)["sha256"] == data_origin(name, "/nonexistent")["sha256"]


def test_a_damaged_packaged_file_is_refused(monkeypatch):
    monkeypatch.setitem(packaged_manifest()["aime24"], "sha256", "0" * 64)
    packaged_text.cache_clear()
    try:
        with pytest.raises(DataError, match="does not match its manifest's sha256"):
            load_problems("aime24", data_dir="/nonexistent")
    finally:
        monkeypatch.undo()
        packaged_text.cache_clear()
    assert len(load_problems("aime24", data_dir="/nonexistent")) == 30


def test_a_data_dir_overrides_the_packaged_copy(tmp_path, monkeypatch):
    (tmp_path / "aime24.jsonl").write_text(json.dumps({"id": "x", "problem": "1+1?", "answer": "2"}) + "\n")
    monkeypatch.setenv("RLSTEER_DATA_DIR", str(tmp_path))
    assert [p.id for p in load_problems("aime24")] == ["x"]
    assert data_origin("aime24")["file"] == str((tmp_path / "aime24.jsonl").resolve())
    assert len(load_problems("aime25")) == 30  # not in the folder: the packaged copy
    monkeypatch.delenv("RLSTEER_DATA_DIR")
    assert [p.id for p in load_problems("aime24", data_dir=tmp_path)] == ["x"]
    assert len(load_problems("aime24")) == 30


def test_registry_knows_the_paper_sets_and_hub_ids():
    assert set(EVAL_SETS) == {"aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench", "gsm8k"}
    assert REGISTRY["aime25"].configs == ("AIME2025-I", "AIME2025-II")
    assert REGISTRY["math500"].hf_id == "HuggingFaceH4/MATH-500"
    assert REGISTRY["deepscaler"].kind == "train"


def test_missing_local_file_without_datasets_says_what_to_do(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "datasets" else real_import(name, *a, **k))
    with pytest.raises(DataError, match=r"pip install 'rlsteer\[hub\]'"):
        load_problems("deepscaler", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"pip install 'rlsteer\[hub\]'"):  # hub: skips the packaged copy
        load_problems("hub:math500")
    with pytest.raises(DataError, match=r"unknown dataset 'math5000' in 'hub:math5000'"):
        load_problems("hub:math5000")
    assert data_origin("hub:math500") == {"hub": "HuggingFaceH4/MATH-500", "split": "test"}


def test_local_jsonl_folder_limit_and_shuffle(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"id": str(i), "problem": f"p{i}", "answer": i})
                                                for i in range(5)))
    (tmp_path / "b.jsonl").write_text(json.dumps({"question": "q", "answer": 27.0}) + "\n")
    problems = load_problems(str(tmp_path))
    assert [p.problem for p in problems] == ["p0", "p1", "p2", "p3", "p4", "q"]
    assert problems[-1].answer == "27" and problems[-1].id == "0"
    shuffled = load_problems(str(tmp_path), shuffle_seed=3, limit=4)
    assert len(shuffled) == 4 and shuffled != problems[:4]
    assert shuffled == load_problems(str(tmp_path), shuffle_seed=3, limit=4)


def test_bad_rows_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        json.dumps({"problem": "fine", "answer": "1"}),
        json.dumps({"problem": "no answer"}),
        json.dumps({"answer": "2"}),
        json.dumps({"problem": "  ", "answer": ""}),
    ]))
    with pytest.raises(DataError) as info:
        load_problems(str(path))
    message = str(info.value)
    assert message.startswith("3 rows without a problem or an answer")
    assert f"{path}:2 (no answer)" in message and f"{path}:3 (no problem)" in message
    assert f"{path}:4 (no problem and no answer)" in message
    path.write_text('{"problem": "x", "answer": "1"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_problems(str(path))


def test_empty_and_unknown_datasets(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="has no problems"):
        load_problems(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="after limit=0"):
        load_problems("synthetic-arithmetic:n=3", limit=0)
    with pytest.raises(DataError, match="unknown dataset 'gsm9k'"):
        load_problems("gsm9k")
    with pytest.raises(DataError, match="bad synthetic option 'size=3'"):
        load_problems("synthetic-arithmetic:size=3")


def test_synthetic_tasks_are_deterministic_and_correct():
    a = synthetic_arithmetic(50, digits=2, ops="+-*", seed=7)
    assert a == synthetic_arithmetic(50, digits=2, ops="+-*", seed=7)
    assert a != synthetic_arithmetic(50, digits=2, ops="+-*", seed=8)
    for p in a:
        numbers = [int(w) for w in p.problem.replace("?", " ").replace(".", " ").split() if w.isdigit()]
        assert min(numbers) >= 10 and max(numbers) <= 99
        op = p.meta["ops"]
        x, y = numbers
        assert int(p.answer) == {"+": x + y, "-": x - y, "*": x * y}[op]
        assert int(p.answer) >= 0
        assert math_reward(f"\\boxed{{{p.answer}}}", p.answer) == 1.0
    expr = synthetic_arithmetic(5, operands=4, digits=1, ops="+-", style="expression", seed=1)
    for p in expr:
        assert str(eval(p.problem.removeprefix("What is ").rstrip("?"))) == p.answer  # noqa: S307
    with pytest.raises(DataError, match="operands=2"):
        synthetic_arithmetic(5, operands=3, style="word")


def test_synthetic_split_keeps_held_out_sums_out_of_training():
    """train and test halves share no addition, in either order, across seeds, styles and sizes (kills a split by
    seed or by position, which would draw the same pairs into both halves, and an order-sensitive split)."""
    def sums(problems):
        return {tuple(sorted(int(w) for w in p.problem.replace("?", " ").split() if w.isdigit())) for p in problems}

    train = [synthetic_arithmetic(300, digits=1, style=style, split="train", seed=seed)
             for style in ("word", "expression") for seed in (0, 1)]
    test = synthetic_arithmetic(52, digits=1, style="expression", split="test", distinct=True, seed=991)
    assert len({p.problem for p in test}) == 52  # every one-digit addition of the held-out half, once
    seen = set().union(*map(sums, train))
    assert seen and not seen & sums(test)
    assert len(seen | sums(test)) == 55  # together: every unordered pair of one-digit numbers
    with pytest.raises(DataError, match="found only 52 distinct problems in split=test"):
        synthetic_arithmetic(53, digits=1, style="expression", split="test", distinct=True)
    # split=all draws as before (recorded from the generator before splits existed)
    assert [(p.problem, p.answer) for p in synthetic_arithmetic(3, digits=1, seed=4, style="expression")] == [
        ("What is 3 + 4?", "7"), ("What is 6 + 7?", "13"), ("What is 1 + 1?", "2")]
    assert load_problems("synthetic-arithmetic:n=4,digits=1,split=test,holdout=0.3,distinct=1")[0].source == \
        "synthetic-arithmetic"
    with pytest.raises(DataError, match="use split=all, train or test"):
        load_problems("synthetic-arithmetic:n=4,split=dev")
