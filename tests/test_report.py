"""The report: built from records only, self-contained, and graceful when analyses or evaluations are missing."""

from __future__ import annotations

import json

import pytest

from rlsteer.cli import main
from rlsteer.report import ReportError, build_report
from tests.test_evaluate import toy_benchmark
from tests.test_train import smoke


def test_a_trained_evaluated_and_analysed_run(tmp_path, capsys):
    from rlsteer.train import train

    run = train(smoke(tmp_path / "run", "rl.steps=3", "run.checkpoint_every=3"), log=lambda _: None)
    assert main(["eval", str(run), "--benchmarks", str(toy_benchmark(tmp_path / "toy.jsonl", 2)), "--seeds", "0",
                 "protocol.max_new_tokens=3", "reward.workers=0"]) == 0
    assert main(["analyze", "lens", str(run / "vectors.safetensors"), "--k", "3"]) == 0
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run / 'report.html'}"
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # training curves + the two lens figures, embedded
    assert "<h4>eval/latest</h4>" in page and "<td>toy</td>" in page
    assert "paper Table 8" in page and "logit-lens tables" in page
    assert "src=\"http" not in page and "src='http" not in page  # nothing fetched from elsewhere


def test_missing_parts_are_said_not_fatal(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward_mean": -1.0, "accuracy": 0.0, "len_mean": 2,
                                                   "truncated": 1.0, "norm/resid_post.3": 0.0}) + "\n")
    page = build_report([run], tmp_path / "r.html").read_text()
    assert "No evaluations yet" in page and "No analyses yet" in page and "Reward -1.000" in page
    with pytest.raises(ReportError, match="not a directory"):
        build_report([tmp_path / "nope"], tmp_path / "r.html")


def fake_result(folder, accuracy: float, temperature: float) -> None:
    folder.mkdir(parents=True)
    cell = {"mean": accuracy, "std": 0.0}
    (folder / "results.json").write_text(json.dumps({
        "target": folder.name, "benchmarks": {"toy": {"n": 1, "problems": 4, "first": cell, "avg": cell}},
        "protocol": {"config": {"model": {"name": "m"}, "target": {"prefix": None},
                                "protocol": {"temperature": temperature, "max_new_tokens": 8, "seeds": [0]}}}}))


def test_a_folder_of_runs_gets_an_overview(tmp_path):
    root = tmp_path / "demo"
    for run, rewards in (("a", (-0.5, 0.5)), ("b", (-0.5, -0.4))):
        (root / run).mkdir(parents=True)
        (root / run / "metrics.jsonl").write_text("".join(json.dumps(
            {"step": k + 1, "reward_mean": r, "accuracy": (r + 1) / 2, "len_mean": 3, "truncated": 0.0}) + "\n"
            for k, r in enumerate(rewards)))
    fake_result(root / "eval" / "base", 0.25, 0.0)
    fake_result(root / "a" / "eval" / "greedy", 0.75, 0.0)
    fake_result(root / "a" / "eval" / "sampled", 0.5, 1.0)
    page = build_report([root], tmp_path / "r.html").read_text()
    assert "Overview" in page and page.count("<table><tr><th>evaluation</th>") == 2  # one table per protocol
    greedy = page[page.index("greedy, 8 new tokens"):page.index("T=1.0")]
    assert "<td>base</td>" in greedy and "<td>a/greedy</td>" in greedy and "<td>75.0 ± 0.0</td>" in greedy
    assert "<td>a/sampled</td>" not in greedy
    assert greedy.index("<td>base</td>") < greedy.index("<td>a/greedy</td>")  # the folder's baselines first
    assert page.index("Overview") < page.index(f"<h2>{root / 'a'}</h2>") < page.index(f"<h2>{root / 'b'}</h2>")
    # a folder holding only evaluations (rlsteer eval's default evals/) is compared too
    only = build_report([root / "eval"], tmp_path / "e.html").read_text()
    assert "<td>base</td>" in only and "No training metrics" not in only


def test_a_python_reward_run_shows_each_function_and_samples_side_by_side(tmp_path):
    run = tmp_path / "json"
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps({"reward": {"kind": "python", "success_above": 0.5, "functions": [
        {"function": "m:json_shape", "weight": 1.0}, {"function": "m:json_answer", "weight": 0.5}]}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": k + 1, "reward_mean": s + 0.5 * a, "accuracy": s, "len_mean": 9, "truncated": 0.0,
         "reward/json_shape": s, "reward/json_answer": a}) + "\n" for k, (s, a) in enumerate([(0.1, 0.0), (0.9, 0.4)])))
    for name, text, score in (("base", "The sum is 7.", 0.0), ("latest", '{"sum": 7}', 1.5)):
        fake_result(run / "eval" / name, score / 1.5, 0.0)
        (run / "eval" / name / "samples").mkdir()
        (run / "eval" / name / "samples" / "toy.seed0.jsonl").write_text(json.dumps(
            {"problem_index": 0, "sample": 0, "prompt": "What is 3 + 4? <b>JSON</b>", "completion": text,
             "reward": float(score > 0.5), "score": score, "rewards": {"json_shape": score > 0, "json_answer": 0.0},
             "status": "correct" if score > 0.5 else "wrong"}) + "\n")
    page = build_report([run], tmp_path / "r.html").read_text()
    assert "Reward = 1 × json_shape + 0.5 × json_answer" in page and "json_shape 0.100 → 0.900" in page
    assert "above 0.5" in page and "Math-Verify" not in page
    side = page[page.index("Samples of toy.seed0"):]
    assert side.index("<th>base</th>") < side.index("<th>latest</th>")
    assert side.index("The sum is 7.") < side.index("{&quot;sum&quot;: 7}")  # base first, then steered, escaped
    assert "&lt;b&gt;JSON&lt;/b&gt;" in side and "reward 1.5" in side and "latest: mean reward 1.500" in side
