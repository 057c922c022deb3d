"""Your own task end to end: datasets with any columns (files and functions), training and evaluation with
reward functions from user code scoring alike, failures that stop a run without applying the step, and the
worked example's rewards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rlsteer.cli import main
from rlsteer.config import RewardFunctionsSection, TrainConfig, load_config
from rlsteer.data import DataError, Problem, data_origin, load_problems
from rlsteer.examples import json_reply
from rlsteer.metrics import read_metrics
from rlsteer.models import smollm2_tokenizer
from rlsteer.rollout import Request, Rollout
from rlsteer.samples import read_samples
from rlsteer.scorers import FunctionScorer
from rlsteer.templates import build_prompt
from tests import user_rewards
from tests.test_bad_input import fails

MODEL = "tiny-random-qwen3"
REWARDS = Path(user_rewards.__file__)
#: the smoke preset made a python-reward run: 2 prompts × 2 samples, 3 new tokens
PYTHON_RUN = ["train", "smoke", f"model.name={MODEL}", "reward.kind=python", "reward.target=", "rl.prompts_per_step=2",
              "rl.samples_per_prompt=2", "rollout.max_new_tokens=3"]


def labelled_file(path: Path, n: int = 4) -> Path:
    words = ["yes", "no", "hi", "ok"][:n]
    rows = [{"prompt": f"Say {w}.", "label": w, "lang": "en", "n": i} for i, w in enumerate(words)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_file_with_any_columns_names_its_problem_and_answer_fields_and_keeps_the_rest(tmp_path):
    path = labelled_file(tmp_path / "task.jsonl")
    problems = load_problems(str(path), problem_field="prompt", answer_field="label")
    assert [(p.problem, p.answer) for p in problems][:2] == [("Say yes.", "yes"), ("Say no.", "no")]
    assert problems[0].meta == {"lang": "en", "n": 0}  # the problem and answer columns are not repeated there
    no_gold = load_problems(str(path), problem_field="prompt", answer_field=None)
    assert no_gold[1].answer is None and no_gold[1].meta == {"label": "no", "lang": "en", "n": 1}


def test_parquet_columns_work_the_same(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    path = tmp_path / "task.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "Say yes.", "label": "yes", "n": 3}]), path)
    [problem] = load_problems(str(path), problem_field="text", answer_field=None)
    assert (problem.problem, problem.answer, problem.meta) == ("Say yes.", None, {"label": "yes", "n": 3})


def test_rows_without_the_answer_column_suggest_a_null_answer_field(tmp_path):
    path = labelled_file(tmp_path / "task.jsonl")
    with pytest.raises(DataError, match=r"4 rows without a problem \('prompt'\) or an answer: .*task.jsonl:1 \(no "
                                        r"answer\).*; fix or remove them, or set answer_field to null"):
        load_problems(str(path), problem_field="prompt")
    with pytest.raises(DataError, match="name the columns of dataset files and functions; 'gsm8k' has its own"):
        load_problems("gsm8k", problem_field="question")


def test_a_dataset_function_gives_rows_like_a_file(tmp_path):
    problems = load_problems("rlsteer.examples.json_reply:training_rows")
    assert len(problems) == 320 and problems[0].meta["key"] in json_reply.KEYS
    assert problems[0].source == "training_rows"
    spec = "rlsteer.examples.json_reply:held_out_rows"
    assert data_origin(spec) == {"function": spec}
    path = tmp_path / "rows.py"
    path.write_text("def rows():\n    return [{'question': 'q', 'answer': 1}, 'oops']\n")
    with pytest.raises(DataError, match=r"dataset function '.*rows.py:rows': row 2 is a str, not a dict of columns"):
        load_problems(f"{path}:rows")
    record = data_origin(f"{path}:rows")
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_eval_with_a_reward_function_scores_every_sample_as_the_training_scorer_does(tmp_path):
    """One scorer for both: the evaluation's per-sample scores are what training's scorer gives the same
    completions, weights, columns and success threshold included; protocol.json records the functions."""
    data = labelled_file(tmp_path / "task.jsonl")
    functions = [{"function": f"{REWARDS}:labelled", "weight": 2.0}, {"function": "tests.user_rewards:length",
                                                                      "weight": 1.0, "name": "len"}]
    out = tmp_path / "eval"
    assert main(["eval", "--model", MODEL, "--benchmarks", str(data), "--out", str(out), "protocol.max_new_tokens=4",
                 "protocol.problem_field=prompt", "protocol.answer_field=null",
                 f"reward.functions={json.dumps(functions)}", "reward.success_above=2.6", "protocol.n={task: 2}"]) == 0
    samples = read_samples(out / "samples" / "task.seed0.jsonl")
    assert len(samples) == 8
    train = load_config(TrainConfig, {"reward": {"kind": "python", "functions": functions, "success_above": 2.6}})
    problems = load_problems(str(data), problem_field="prompt", answer_field=None)
    tok = smollm2_tokenizer()  # the tiny models' tokenizer
    stop_ids = build_prompt(tok, "x", "qwen-math").stop_ids
    rollouts = [Rollout(Request((1,), stop_ids), tuple(tok.encode(s["completion"], add_special_tokens=False)),
                        s["completion"], s["finish_reason"]) for s in samples]
    batch = FunctionScorer(train.reward, tok).score(rollouts, [problems[s["problem_index"]] for s in samples])
    assert [s["score"] for s in samples] == list(batch.rewards)
    assert [s["rewards"] for s in samples] == [{"labelled": a, "len": b} for a, b in
                                               zip(batch.components["labelled"], batch.components["len"], strict=True)]
    assert [s["reward"] for s in samples] == [float(st == "correct") for st in batch.statuses]
    assert set(batch.statuses) == {"correct", "wrong"}  # the threshold splits these samples: not vacuous
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["reward"]["functions"][0] == {"function": f"{REWARDS}:labelled", "file": str(REWARDS.resolve()),
                                                  "sha256": hashlib.sha256(REWARDS.read_bytes()).hexdigest(),
                                                  "weight": 2.0, "name": "labelled"}
    assert protocol["config"]["reward"]["success_above"] == 2.6
    results = json.loads((out / "results.json").read_text())["benchmarks"]["task"]
    assert results["avg"]["mean"] == sum(s["reward"] for s in samples) / 8


def test_eval_reward_flag_takes_one_function(tmp_path, capsys):
    data = labelled_file(tmp_path / "task.jsonl", n=2)
    assert main(["eval", "--model", MODEL, "--benchmarks", str(data), "--out", str(tmp_path / "e"),
                 "--reward", "tests.user_rewards:length", "protocol.max_new_tokens=2", "protocol.problem_field=prompt",
                 "protocol.answer_field=label"]) == 0
    [sample, _] = read_samples(tmp_path / "e" / "samples" / "task.seed0.jsonl")
    assert sample["score"] == len(sample["completion"]) / 10 and sample["gold"] == "yes"
    fails(capsys, ["eval", "--model", MODEL, "--benchmarks", str(data), "--out", str(tmp_path / "f"),
                   "--reward", "tests.user_rewards:nope", "protocol.problem_field=prompt",
                   "protocol.answer_field=label"], "tests.user_rewards has no 'nope'")
    assert not (tmp_path / "f").exists()


def test_a_function_that_fails_on_step_two_stops_the_run_with_one_line_and_step_two_unapplied(tmp_path, capsys):
    user_rewards.STEP["calls"] = 0
    run = tmp_path / "run"
    line = fails(capsys, [*PYTHON_RUN, "reward.function=tests.user_rewards:fails_on_second_call", "rl.steps=3",
                          "run.checkpoint_every=1", f"run.dir={run}"],
                 "reward function fails_on_second_call (tests.user_rewards:fails_on_second_call) returned nan on "
                 "completion 1 of 4")
    assert "the step was not applied" in line and f"rlsteer train {run / 'config.yaml'} --resume" in line
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1"]


def test_a_hanging_function_in_workers_stops_training_with_one_line(tmp_path, capsys):
    fails(capsys, [*PYTHON_RUN, "reward.function=tests.user_rewards:hangs", "reward.workers=1", "reward.timeout_s=1",
                   "rl.steps=1", f"run.dir={tmp_path / 'run'}"],
          "reward function hangs (tests.user_rewards:hangs) took longer than reward.timeout_s=1 s on completion 1 of 4")


def test_a_bad_reward_spec_leaves_no_run_directory(tmp_path, capsys):
    fails(capsys, [*PYTHON_RUN, f"reward.function={tmp_path}/none.py:fn", f"run.dir={tmp_path / 'run'}"],
          f"no file {tmp_path}/none.py")
    assert not (tmp_path / "run").exists()


def test_training_logs_each_reward_function(tmp_path):
    run = tmp_path / "run"
    functions = json.dumps([{"function": "tests.user_rewards:length", "weight": 0.5},
                            {"function": "tests.user_rewards:says_answer", "weight": 2.0}])
    assert main([*PYTHON_RUN, f"reward.functions={functions}", "rl.steps=2", f"run.dir={run}"]) == 0
    for record in read_metrics(run / "metrics.jsonl"):
        weighted = 0.5 * record["reward/length"] + 2.0 * record["reward/says_answer"]
        assert record["reward_mean"] == pytest.approx(weighted)
        assert record["reward/length"] > 0


def test_the_worked_example_rewards():
    replies = ['```json\n{"sum": 7}\n```', '  {"sum": "7"}\n', '{"answer": 7}', '{"sum": 7, "x": 1}', "The sum is 7.",
               '{"sum": 8}', '{"sum": [7]}', '{"sum": 7} is my answer', '{"sum": 7}\n```json\n{"sum": 7}\n```']
    keys = ["sum"] * len(replies)
    assert json_reply.json_shape(replies, key=keys) == [1, 1, 0, 0, 0, 1, 1, 0, 0]
    assert json_reply.json_answer(replies, answers=["7"] * len(replies), key=keys) == [1, 1, 0, 0, 0, 0, 0, 0, 0]
    train, test = json_reply.training_rows(), json_reply.held_out_rows()
    assert not {r["problem"] for r in train} & {r["problem"] for r in test}


def test_reward_functions_see_completions_without_the_stop_token():
    tok = smollm2_tokenizer()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = (*tok.encode('{"sum": 7}', add_special_tokens=False), end)
    text = tok.decode(list(ids), skip_special_tokens=False)
    problem = Problem("0", "q", "7", "toy", {"key": "sum"})
    section = RewardFunctionsSection(function="rlsteer.examples.json_reply:json_shape")
    stopped = Rollout(Request((1,), (end,)), ids, text, "stop")
    assert text.endswith("<|im_end|>") and FunctionScorer(section, tok).score([stopped], [problem]).rewards == (1.0,)
    cut = Rollout(Request((1,), (end,)), ids[:-1] + (ids[-1] - 1,), text, "length")  # not ended by a stop token
    assert FunctionScorer(section, tok).completion(cut) == text


def test_the_worked_example_preset_loads():
    cfg = load_config(TrainConfig, "json-cpu")
    assert cfg.reward.kind == "python" and [n for _, _, n in cfg.reward.entries()] == [None, None]
    assert len(load_problems(cfg.data.dataset)) == 320
