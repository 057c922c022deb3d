"""The bad-input suite, continued: runs and records (issue 17). Each test is one row of the issue: config
values out of range, a failed start, two owners, runs that move, names that escape, damaged records, files
that are not UTF-8, prompts over the budget, stable bytes and verifier totals. Every failure is one
``rlsteer: error:`` line with exit status 2, never a traceback; damaged records are warnings, not failures."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rlsteer.evaluate as evaluate_module
import rlsteer.train as train_module
from rlsteer import SteeringVectors
from rlsteer.cli import main
from rlsteer.errors import RlsteerError
from rlsteer.lock import LOCK
from rlsteer.metrics import read_metrics
from rlsteer.rewards import RewardPool
from rlsteer.rollout import Request, SamplingParams
from rlsteer.rollout.hf import HFBackend
from rlsteer.rundir import RunDir
from rlsteer.samples import read_samples
from rlsteer.steering.vectors import open_vector_file
from tests.test_bad_input import EVAL, MODEL, SMALL, fails, files, vector_file
from tests.test_interrupt import Child

ROOT = Path(__file__).resolve().parents[1]
#: a two-step smoke run of 2 prompts × 2 samples
TRAIN = ["train", "smoke", f"model.name={MODEL}", "rl.steps=2", *SMALL]


def no_model(monkeypatch) -> None:
    """Loading the model fails the test: what is checked must be checked before the (10-20 s) load."""
    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(train_module, "load_model", load_model)
    monkeypatch.setattr(evaluate_module, "load_model", load_model)


def output(capsys) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


# -------------------------------------------------------------------- 1. config values out of range


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "smoke", "rl.prompts_per_step=0"], "rl.prompts_per_step=0 is out of range: it must be at least 1"),
    (["train", "smoke", "rl.steps=-5"], "rl.steps=-5 is out of range: it must be at least 1"),
    (["train", "smoke", "run.checkpoint_every=0"], "run.checkpoint_every=0 is out of range: it must be at least 1"),
    (["train", "smoke", "optim.lr=nan"], "optim.lr=nan is not a finite number; it must be more than 0 and at most 1"),
    (["train", "smoke", "optim.lr=-1"], "optim.lr=-1.0 is out of range: it must be more than 0 and at most 1"),
    (["train", "smoke", "optim.lr=1e30"], "optim.lr=1e+30 is out of range: it must be more than 0 and at most 1"),
    (["train", "smoke", "rl.micro_batch_size=0"], "rl.micro_batch_size=0 is out of range: it must be at least 1"),
    (["train", "smoke", "rl.samples_per_prompt=1"], "rl.samples_per_prompt=1 is out of range: it must be at least 2"),
    (["train", "smoke", "reward.workers=-1"], "reward.workers=-1 is out of range: it must be at least 0"),
    (["train", "smoke", "optim.betas=[0.9, 1.0]"], "optim.betas[1]=1.0 is out of range: it must be at least 0 and "
                                                   "less than 1"),
    (["eval", *EVAL, "--limit", "-1"], "protocol.limit=-1 is out of range: it must be at least 1"),
    (["eval", *EVAL, "--scale", "nan"], "target.scale=nan is not a finite number"),
    (["eval", *EVAL, "reward.timeout_s=0"], "reward.timeout_s=0.0 is out of range: it must be more than 0"),
    (["eval", *EVAL, "engine.chunk=0"], "engine.chunk=0 is out of range: it must be at least 1"),
    (["eval", *EVAL, "protocol.top_p=0"], "protocol.top_p=0.0 is out of range: it must be more than 0 and at most 1"),
], ids=["prompts_per_step", "steps", "checkpoint_every", "lr-nan", "lr-negative", "lr-huge", "micro_batch_size",
        "samples_per_prompt", "workers", "betas", "limit", "scale-nan", "timeout", "chunk", "top_p"])
def test_config_values_out_of_range(tmp_path, capsys, monkeypatch, argv, message):
    """Each of these used to pass the loader: a traceback later, a ZeroDivisionError after step 1, an
    all-zero vector with exit 0, gradient ascent, NaN log-probs, or all problems but the last."""
    no_model(monkeypatch)
    where = [f"run.dir={tmp_path / 'run'}"] if argv[0] == "train" else ["--out", tmp_path / "eval"]
    fails(capsys, [*argv, *where], message)
    assert files(tmp_path) == []


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "smoke", "steering.layers=[99]"],
     "steering.layers has 99, out of range: tiny-random-llama has 4 layers"),
    (["train", "smoke", "steering.sites=[resid_psot]"], "steering.sites has 'resid_psot', not a site; sites are: "),
    (["train", "smoke", "data.template=qwen"], "data.template='qwen' is not a template; templates: qwen-math, r1"),
    (["train", "smoke", "data.dataset=synthetic-arithmetic:n=4"], "the dataset has 4 problems, fewer than "
                                                                  "rl.prompts_per_step=8"),
    (["eval", "VECTORS", *EVAL, "--patch", "steer_v", "--layer", "2", "--head", "7"],
     "target.patch_head=7 is out of range for steer_v: the model has 2 KV heads; pass --head 0..1"),
    (["eval", "WIDE", *EVAL], "these vectors have width 32 (made for tiny-random-qwen3) but the model has d_model=64"),
    (["eval", *EVAL[:2], "--benchmarks", "no-such-set", "--out", "OUT"], "unknown dataset 'no-such-set'"),
], ids=["layer", "site", "template", "dataset", "patch-head", "width", "benchmark"])
def test_checks_that_need_no_model_come_before_it_loads(tmp_path, capsys, monkeypatch, argv, message):
    swap = {"VECTORS": vector_file(tmp_path / "in" / "v.safetensors"),
            "WIDE": vector_file(tmp_path / "in" / "wide.safetensors", d_model=32), "OUT": tmp_path / "eval"}
    no_model(monkeypatch)
    where = [f"run.dir={tmp_path / 'run'}"] if argv[0] == "train" else ["--out", tmp_path / "eval"]
    fails(capsys, [swap.get(a, a) for a in argv] + where, message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


def test_in_process_verification_is_said_not_silent(tmp_path, capsys):
    """reward.workers=0 (in-process, no deadline) stays for quick runs and tests, but is never silent."""
    assert main(["eval", *EVAL, "--out", str(tmp_path / "eval")]) == 0
    out, _ = output(capsys)
    assert "note: reward.workers=0 verifies answers in this process without the 5 s deadline of reward.timeout_s" \
        in out


def test_a_vector_norm_that_overflows_stops_training(tmp_path):
    """optim.lr = 1e30 used to give finite entries whose norm is inf, unnoticed."""
    vectors = SteeringVectors(64, layers=[3])
    with torch.no_grad():
        vectors.parameter(vectors.entries[0]).fill_(1e30)
    record = {"loss": 0.0, "grad_norm": 1.0, "norm/resid_post.3": float(vectors.norms()["resid_post.3"])}
    with pytest.raises(train_module.TrainingError, match=r"step 1 made the norm of vector resid_post\.3 NaN or inf"):
        train_module.check_finite(1, record, vectors, RunDir(tmp_path / "run"))


# ----------------------------------------------------------------------------- 2. a failed start


def test_a_failed_start_is_no_dead_end(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    args = [*TRAIN, f"run.dir={run}"]

    def broken_backend(*args, **kwargs):  # an error after config.yaml is written
        raise RlsteerError("the rollout engine could not start")

    monkeypatch.setattr(train_module, "make_backend", broken_backend)
    fails(capsys, args, "the rollout engine could not start")
    monkeypatch.undo()
    assert (run / "config.yaml").is_file()
    assert main([*args, "rl.seed=1"]) == 0  # the corrected command: no "already holds a run"
    out, _ = output(capsys)
    assert f"{run} has no checkpoint yet; starting its run again from step 0" in out
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl")] == [1, 2]


def test_a_failed_start_resumed_with_other_settings_starts_again(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"

    def broken_backend(*args, **kwargs):
        raise RlsteerError("the rollout engine could not start")

    monkeypatch.setattr(train_module, "make_backend", broken_backend)
    fails(capsys, [*TRAIN, f"run.dir={run}"], "the rollout engine could not start")
    monkeypatch.undo()
    assert main([*TRAIN, f"run.dir={run}", "rl.seed=3", "--resume"]) == 0  # not "the config differs"
    assert "rl:\n  steps: 2\n" in (run / "config.yaml").read_text() and "seed: 3" in (run / "config.yaml").read_text()


def test_the_nan_advice_works_and_mismatches_name_their_keys(tmp_path, capsys):
    """'lower optim.lr … rerun with --resume' must be possible: optim.* may change on resume (recorded in
    metrics.jsonl); other changes are refused with the keys that differ."""
    run = tmp_path / "run"
    assert main([*TRAIN, f"run.dir={run}", "run.checkpoint_every=1"]) == 0
    fails(capsys, [*TRAIN, f"run.dir={run}", "rl.seed=1", "data.shuffle_seed=2", "--resume"],
          "the config differs from the one " + str(run) + " was started with in data.shuffle_seed (0 → 2), "
          "rl.seed (0 → 1); resume with the same settings (only rl.steps, optim.* and run.* may change)")
    assert main([*TRAIN, f"run.dir={run}", "rl.steps=3", "optim.lr=0.05", "--resume"]) == 0
    out, _ = output(capsys)
    assert "from step-2 with optim.lr (0.1 → 0.05)" in out
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3] and metrics[2]["resumed_with"] == {"optim.lr": [0.1, 0.05]}
    assert metrics[2]["lr"] == pytest.approx(0.05)  # the new lr is the one used (warmup_steps is 0)
    state = json.loads((run / "checkpoints" / "step-3" / "state.json").read_text())
    assert {g["base_lr"] for g in state["param_groups"]} == {0.05}


# ----------------------------------------------------------------------------- 3. one owner per run

HOLD = ("import sys, time\nfrom rlsteer.lock import owning\nwith owning(sys.argv[1], sys.argv[2]):\n"
        "    print('held', flush=True)\n    time.sleep(600)\n")


def hold(folder: Path, what: str) -> subprocess.Popen[str]:
    """Another process that owns ``folder`` (as a running `rlsteer train` or `rlsteer eval` would)."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), what], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    return child


def test_one_owner_per_run_and_evaluation_folder(tmp_path, capsys):
    """Two `rlsteer train … --resume` on one folder used to both run, each step logged twice."""
    run, out = tmp_path / "run", tmp_path / "eval"
    first = Child([*TRAIN[:3], f"run.dir={run}", "rl.steps=1000", "run.checkpoint_every=1000", *SMALL, "--resume"])
    try:
        first.wait_for_step(1)
        fails(capsys, [*TRAIN, f"run.dir={run}", "rl.steps=1", "--resume"],
              f"run {run} is in use by pid {first.proc.pid} on ")
    finally:
        first.stop(signal.SIGKILL)
    assert (run / LOCK).is_file()  # left behind by the killed owner: stale, so the next one takes over
    assert main([*TRAIN, f"run.dir={run}", "--resume"]) == 0
    assert f"{run} was left locked by pid {first.proc.pid} on " in output(capsys)[0]
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl")] == [1, 2] and not (run / LOCK).exists()

    child = hold(out, "evaluation")
    try:
        fails(capsys, ["eval", *EVAL, "--out", out], f"evaluation {out} is in use by pid {child.pid} on ")
    finally:
        child.kill()
        child.wait()
    assert main(["eval", *EVAL, "--out", str(out)]) == 0 and not (out / LOCK).exists()


# ------------------------------------------------------------------------------------ 4. runs that move


def test_runs_and_evaluations_move(tmp_path, capsys):
    original, copy = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert main([*TRAIN, f"run.dir={original}"]) == 0
    assert main(["eval", str(original), *EVAL[2:]]) == 0  # into <run>/eval/latest
    own = original / "eval" / "latest" / "samples" / "synthetic-arithmetic_n_2.seed0.jsonl"
    drawn = own.read_bytes()
    shutil.copytree(original, copy)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in original.rglob("*"))
    assert main(["train", str(copy / "config.yaml"), "rl.steps=3", "--resume"]) == 0  # the folder given wins
    assert [m["step"] for m in read_metrics(copy / "metrics.jsonl")] == [1, 2, 3]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in original.rglob("*")) == before
    assert main(["eval", str(original), *EVAL[2:], "--out", str(tmp_path / "moved-eval")]) == 0
    shutil.move(tmp_path / "moved-eval", tmp_path / "elsewhere")
    samples = (tmp_path / "elsewhere" / "samples" / "synthetic-arithmetic_n_2.seed0.jsonl").read_bytes()
    assert main(["eval", str(original), *EVAL[2:], "--out", str(tmp_path / "elsewhere")]) == 0  # resumes
    assert (tmp_path / "elsewhere" / "samples" / "synthetic-arithmetic_n_2.seed0.jsonl").read_bytes() == samples
    shutil.move(original.parent, tmp_path / "c")
    assert main(["eval", str(tmp_path / "c" / "run"), *EVAL[2:]]) == 0  # the moved run's own evaluation resumes
    assert (tmp_path / "c" / "run" / own.relative_to(original)).read_bytes() == drawn


def test_resume_says_when_there_is_nothing_to_resume(tmp_path, capsys):
    run = tmp_path / "typo"
    assert main([*TRAIN, f"run.dir={run}", "--resume"]) == 0
    assert f"nothing to resume: {run} holds no run yet; starting a new one" in output(capsys)[0]


def test_resume_says_when_rl_steps_is_already_reached(tmp_path, capsys):
    # a resume with rl.steps at or below the finished steps once stopped without a word
    run = tmp_path / "run"
    assert main([*TRAIN, f"run.dir={run}"]) == 0
    output(capsys)
    assert main([*TRAIN[:3], f"run.dir={run}", "rl.steps=1", *SMALL, "--resume"]) == 0
    assert "the run has 2 finished steps and rl.steps=1: nothing is left to train" in output(capsys)[0]


# --------------------------------------------------------------------------------- 5. names that escape


def test_names_never_escape_their_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("../../x", "/tmp/abs", "a/b", ".."):
        fails(capsys, ["train", "smoke", f"run.name={name}", f"run.dir={tmp_path}/a/b/runs/{{name}}", "--dry-run"],
              f"run.name={name!r} is not a folder name")
    assert main(["eval", *EVAL, "--prefix", "x/../../esc"]) == 0
    assert {Path(f).parts[0] for f in files(tmp_path)} == {"evals"}
    assert (tmp_path / "evals" / "base-prefix-x_.._.._esc" / "results.json").is_file()


# --------------------------------------------------------------------------------- 6. damaged records


def test_a_damaged_sample_is_drawn_again(tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", *EVAL[:2], "--benchmarks", "synthetic-arithmetic:n=3", "protocol.max_new_tokens=2",
            "reward.workers=0", "--out", str(out)]
    assert main(args) == 0
    path = out / "samples" / "synthetic-arithmetic_n_3.seed0.jsonl"
    first = read_samples(path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1][:40] + b"\n" + lines[2])  # a line cut in the middle of the file
    assert main(args) == 0
    logged, _ = output(capsys)
    warning = next(line for line in logged.splitlines() if line.startswith(f"{path}:2: not a whole JSON line ("))
    assert warning.endswith("; the line is dropped and its sample drawn again")
    again = read_samples(path)
    assert sorted(r["problem_index"] for r in again) == [0, 1, 2]
    assert {r["problem_index"]: r["completion"] for r in again} == {r["problem_index"]: r["completion"] for r in first}


def test_a_broken_protocol_json_is_one_line(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", *EVAL, "--out", str(out)]) == 0
    (out / "protocol.json").write_text('{"target": "base", "conf')
    fails(capsys, ["eval", *EVAL, "--out", out], f"{out / 'protocol.json'} is damaged (Unterminated string")
    fails(capsys, ["eval", *EVAL, "protocol.temperature=0.5", "--out", out], "is damaged")
    (out / "protocol.json").write_text("[]")
    fails(capsys, ["eval", *EVAL, "--out", out], "is damaged (a JSON list, not a record)")
    (out / "results.json").write_bytes(b'{"target": "base", "bench')
    fails(capsys, ["eval", "--compare", out], f"{out / 'results.json'} is damaged (Unterminated string")


def test_another_protocol_names_the_keys(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", *EVAL, "--out", str(out)]) == 0
    fails(capsys, ["eval", *EVAL, "protocol.temperature=0.5", "--out", out],
          f"{out} holds an evaluation with another protocol or vector (config.protocol.temperature (1.0 → 0.5)); "
          "pass another out= or delete it")


def _run_records(run: Path) -> list[bytes]:
    """metrics.jsonl lines of a four-step run."""
    from rlsteer.config import TrainConfig, dump_yaml, load_config

    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(load_config(TrainConfig, "smoke")))
    return [json.dumps({"step": s, "reward_mean": 0.1 * s, "accuracy": 0.1, "len_mean": 2.0, "truncated": 0.0,
                        "norm/resid_post.3": 0.5 * s}).encode() + b"\n" for s in (1, 2, 3, 4)]


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda line: line[:25] + b"\n", "not a whole JSON line"),
    (lambda line: b"[1, 2, 3]\n", "a JSON list, not a record"),
    (lambda line: line.replace(b'"reward_mean": 0.2', b'"reward_mean": "0.2"'), "reward_mean is '0.2', not a number"),
    (lambda line: line.replace(b'"accuracy"', b'"acc\xffuracy"'), "byte 0xff at offset "),
], ids=["torn", "not-an-object", "wrong-type", "not-utf8"])
def test_report_skips_damaged_metrics_lines(tmp_path, capsys, damage, problem):
    run = tmp_path / "run"
    lines = _run_records(run)
    (run / "metrics.jsonl").write_bytes(lines[0] + damage(lines[1]) + lines[2] + lines[3])
    (run / "eval" / "x").mkdir(parents=True)
    (run / "eval" / "x" / "results.json").write_text('{"target": "x", "bench')
    assert main(["report", str(run)]) == 0
    _, err = output(capsys)
    assert f"rlsteer: warning: {run / 'metrics.jsonl'}:2: {problem}" in err
    assert f"rlsteer: warning: {run / 'eval' / 'x' / 'results.json'}: not a readable rlsteer results file" in err
    assert "Traceback" not in err and "over 3 steps" in (run / "report.html").read_text()


def test_resume_says_which_step_a_torn_metrics_line_lost(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, f"run.dir={run}", "run.checkpoint_every=1"]) == 0
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (run / "metrics.jsonl").write_bytes(lines[0][:30] + b"\n" + lines[1])  # step 1's line torn mid-file
    assert main([*TRAIN, f"run.dir={run}", "rl.steps=3", "--resume"]) == 0
    said = next(line for line in output(capsys)[0].splitlines() if line.startswith(f"{run / 'metrics.jsonl'}:1 "))
    assert said.startswith(f"{run / 'metrics.jsonl'}:1 is damaged (not a whole JSON line (")
    assert "and was dropped: the metrics of step 1 are lost" in said
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl")] == [2, 3]


# ---------------------------------------------------------------------------------- 7. not UTF-8


def test_files_that_are_not_utf8(tmp_path, capsys, monkeypatch):
    no_model(monkeypatch)
    config = tmp_path / "train.yaml"
    config.write_bytes(b"model: {name: tiny-random-llama}\n# caf\xe9\n")
    fails(capsys, ["train", config, f"run.dir={tmp_path / 'run'}"],
          f"{config} is not UTF-8 text: byte 0xe9 at offset 38 (line 2); save it as UTF-8")
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"problem": "1+1", "answer": "2"}\n{"problem": "caf\xe9", "answer": "3"}\n')
    fails(capsys, ["eval", *EVAL[:2], "--benchmarks", data, "--out", tmp_path / "eval"],
          f"{data} is not UTF-8 text: byte 0xe9 at offset 50 (line 2); save it as UTF-8")
    fails(capsys, ["train", "smoke", f"data.dataset={data}", f"run.dir={tmp_path / 'run'}"], "is not UTF-8 text")
    assert files(tmp_path) == ["data.jsonl", "train.yaml"]


# --------------------------------------------------------------------------- 8. prompts over the budget


def test_prompts_over_the_budget_are_never_run(tmp_path, capsys, tiny):
    """The HF backend never prefills a prompt that leaves no room to answer (a 60k-token problem once took
    23 GB to produce an empty completion), and an evaluation skips it with a count and a warning."""
    model, tok = tiny("llama")
    widths = []
    real_forward = model.forward
    model.forward = lambda *a, **k: (widths.append(k["input_ids"].shape[1]), real_forward(*a, **k))[1]
    backend = HFBackend(model, tok, batch_size=8, progress=False)
    short, long = Request(tuple(range(5, 10)), (), seed=0), Request(tuple(range(5, 1005)), (), seed=1)
    rollouts = backend.generate([long, short], None, SamplingParams(max_new_tokens=3, max_total_tokens=64))
    assert rollouts[0].token_ids == () and len(rollouts[1].token_ids) == 3
    assert max(widths) == 5  # prefilled the short prompt only, padded to nothing longer

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}) + "\n"
                    + json.dumps({"problem": "Add these: " + " + ".join(["1"] * 400), "answer": "400"}) + "\n")
    out = tmp_path / "eval"
    assert main(["eval", *EVAL[:2], "--benchmarks", str(data), "protocol.max_new_tokens=2",
                 "protocol.max_total_tokens=200", "reward.workers=0", "--out", str(out)]) == 0
    logged, _ = output(capsys)
    assert "warning: data seed 0: 1 prompt(s) are as long as protocol.max_total_tokens=200 or longer" in logged
    results = json.loads((out / "results.json").read_text())["benchmarks"]["data"]
    assert results["prompts_too_long"] == 1 and results["problems"] == 2
    assert "1 samples of prompts over the token budget" in (out / "results.md").read_text()

    run = tmp_path / "run"
    assert main(["train", "smoke", f"data.dataset={data}", "rl.prompts_per_step=1", "rl.samples_per_prompt=2",
                 "rl.steps=1", "rollout.max_total_tokens=200", f"run.dir={run}"]) == 0
    assert "warning: 1 of 2 prompts are as long as rollout.max_total_tokens=200 or longer" in output(capsys)[0]


# -------------------------------------------------------------------------------------- 9. stable bytes


def test_vector_files_keep_their_bytes_and_evaluations_their_identity(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, f"run.dir={run}"]) == 0
    assert main(["eval", str(run), *EVAL[2:]]) == 0
    before = (run / "vectors.safetensors").stat()
    sha = open_vector_file(run / "vectors.safetensors").sha256
    assert main([*TRAIN, f"run.dir={run}", "--resume"]) == 0  # a finished run: nothing to do, nothing rewritten
    after = (run / "vectors.safetensors").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert open_vector_file(run / "vectors.safetensors").sha256 == sha
    assert main(["eval", str(run), *EVAL[2:]]) == 0  # the earlier evaluation resumes

    vectors = SteeringVectors.load(run / "vectors.safetensors")
    vectors.save(tmp_path / "a.safetensors")
    vectors.save(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    out = tmp_path / "eval"
    assert main(["eval", str(tmp_path / "a.safetensors"), *EVAL[2:], "--out", str(out)]) == 0
    vectors.save(tmp_path / "a.safetensors", note="the same tensors, other metadata")
    assert main(["eval", str(tmp_path / "a.safetensors"), *EVAL[2:], "--out", str(out)]) == 0  # same identity
    line = fails(capsys, ["eval", str(vector_file(tmp_path / "a.safetensors")), *EVAL[2:], "--out", out],
                 "holds an evaluation with another protocol or vector (")
    assert "vectors ('" in line  # other tensors: named, with their hashes


# ---------------------------------------------------------------------------------------------- 10. totals


def test_a_hung_verifier_times_out_the_run_continues_and_the_results_count_it(tmp_path, capsys, monkeypatch):
    data = tmp_path / "hang.jsonl"
    data.write_text('{"problem": "What is 1 + 1?", "answer": "HANG"}\n{"problem": "What is 2 + 2?", "answer": "4"}\n')
    monkeypatch.setattr(evaluate_module, "RewardPool",
                        functools.partial(RewardPool, verify="tests.slow_verifier:verify_or_hang"))
    out = tmp_path / "eval"
    assert main(["eval", "--model", MODEL, "--benchmarks", str(data), "protocol.max_new_tokens=2",
                 "reward.workers=1", "reward.timeout_s=0.5", "--out", str(out)]) == 0
    samples = read_samples(out / "samples" / "hang.seed0.jsonl")
    assert sorted(s["status"] for s in samples) == ["no_answer", "timeout"]  # the random model never boxes
    assert next(s for s in samples if s["status"] == "timeout")["gold"] == "HANG"
    result = json.loads((out / "results.json").read_text())["benchmarks"]["hang"]
    assert result["problems"] == 2
    assert (result["verifier_timeouts"], result["parse_failures"], result["missing_answers"]) == (1, 0, 1)
    assert "hang: 1 verifier timeouts, 1 missing answers (over all seeds; each counts as wrong)" in \
        (out / "results.md").read_text()
