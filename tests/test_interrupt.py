"""Interruption: SIGINT/SIGTERM stop train and eval cleanly, kill -9 loses nothing that resume cannot redo,
and every file is written atomically (a scan of the package keeps it so)."""

from __future__ import annotations

import ast
import json
import os
import random
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

import rlsteer.train as train_module
from rlsteer import evaluate as ev
from rlsteer import samples
from rlsteer.cli import main
from rlsteer.config import EvalConfig, TrainConfig, load_config
from rlsteer.evaluate import evaluate
from rlsteer.interrupt import Interrupted, held, interruptible
from rlsteer.io import replacing, staged_folder, write_atomically
from rlsteer.metrics import append_metrics, read_metrics
from rlsteer.rewards import RewardPool
from rlsteer.rundir import RunDir
from rlsteer.samples import read_samples
from rlsteer.steering.vectors import read_vector_file
from rlsteer.train import train

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
STEPS = 6
# the smoke task made small: 4 prompts × 4 samples, one token each; at T=0.15 the target token is sampled
# early enough that the vector changes from step 2 or 3 on, so the bit-for-bit comparisons mean something
FAST = [f"rl.steps={STEPS}", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rollout.max_new_tokens=1",
        "rollout.temperature=0.15"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run with a checkpoint after every step."""
    cfg = load_config(TrainConfig, SMOKE, [f"run.dir={tmp_path_factory.mktemp('ref') / 'run'}", *FAST,
                                           "run.checkpoint_every=1"])
    run = train(cfg, log=lambda _: None)
    two, three, last = (vectors_of(run / "checkpoints" / f"step-{s}" / "vectors.safetensors")["resid_post.3"]
                        for s in (2, 3, STEPS))
    assert not torch.equal(two, three) and not torch.equal(three, last), "the vector must change from step 3 on"
    return run


def vectors_of(path: Path) -> dict[str, torch.Tensor]:
    return read_vector_file(path)[0]


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_consistent(run: Path, reference: Path) -> int:
    """The run directory after a stop: metrics, latest checkpoint and vectors.safetensors all describe the same
    step, bit for bit as the reference run had them; no temporary files. Returns that step."""
    steps = [m["step"] for m in read_metrics(run / "metrics.jsonl")]
    ckpt = RunDir(run).latest_checkpoint()
    done = int(ckpt.name.removeprefix("step-")) if ckpt else 0
    assert steps == list(range(1, done + 1))
    if ckpt is not None:
        ref = reference / "checkpoints" / ckpt.name
        # the global torch RNG state depends on what the process did before training (the training itself
        # never draws from it: every sample has its own seed), so it is the one tensor left out
        state, ref_state = (load_file(d / "state.safetensors") for d in (ckpt, ref))
        assert state.pop("rng.torch").shape == ref_state.pop("rng.torch").shape
        assert same_tensors(state, ref_state)
        assert json.loads((ckpt / "state.json").read_text()) == json.loads((ref / "state.json").read_text())
        assert same_tensors(vectors_of(ckpt / "vectors.safetensors"), vectors_of(ref / "vectors.safetensors"))
        assert same_tensors(vectors_of(run / "vectors.safetensors"), vectors_of(ref / "vectors.safetensors"))
    assert [p.name for p in run.rglob(".*")] == []
    return done


def assert_finished_like(run: Path, reference: Path) -> None:
    assert same_tensors(vectors_of(run / "vectors.safetensors"), vectors_of(reference / "vectors.safetensors"))
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl")] == list(range(1, STEPS + 1))


# ------------------------------------------------------------------------------------- the signal guards


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_raise_interrupted_inside_the_block_and_handlers_come_back(signum, code):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Interrupted) as info, interruptible():
        signal.raise_signal(signum)
        pytest.fail("the handler raises first")
    assert info.value.signum == signum and info.value.exit_code == code
    assert str(info.value) == f"interrupted by {signal.Signals(signum).name}"
    assert {s: signal.getsignal(s) for s in before} == before


def test_held_blocks_finish_before_the_signal_takes_effect():
    done = []
    with pytest.raises(Interrupted) as info, interruptible():
        with held():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)
            done.append("write")
        done.append("after")  # never reached
    assert done == ["write"] and info.value.signum == signal.SIGTERM  # the first signal wins
    # outside interruptible(): the handler in place (here Python's default, installed explicitly because
    # earlier tests or libraries may have replaced it) runs after the block
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), held():
            signal.raise_signal(signal.SIGINT)
            done.append("plain")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done[-1] == "plain"


def test_guards_do_nothing_outside_the_main_thread():
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with interruptible(), held():
                pass
        except BaseException as err:  # noqa: BLE001 - any error is the failure
            errors.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == []


# ------------------------------------------------------------------------------------- atomic files


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path):
    target = tmp_path / "deep" / "results.json"
    write_atomically(target, "old")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "old"
    folder = tmp_path / "step-1"
    for content in ("first", "second"):
        with staged_folder(folder) as staging:
            (staging / "state.json").write_text(content)
    with pytest.raises(RuntimeError), staged_folder(folder) as staging:
        (staging / "state.json").write_text("third")
        raise RuntimeError("the writer failed")
    assert (folder / "state.json").read_text() == "second"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "results.json", "state.json", "step-1"]


def test_readers_drop_a_torn_last_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    for step in (1, 2):
        append_metrics(metrics, {"step": step})
    with metrics.open("a") as f:
        f.write('{"step": 3, "rew')  # what kill -9 in the middle of a write leaves
    assert read_metrics(metrics) == [{"step": 1}, {"step": 2}]
    samples = tmp_path / "toy.seed0.jsonl"
    samples.write_text('{"problem_index": 0, "sample": 0}\n{"problem_index": 0, "sample": 1}\n{"problem_in')
    assert [r["sample"] for r in read_samples(samples)] == [0, 1]
    assert samples.read_text().endswith("}\n")  # cut off, so the next append starts a fresh line


def test_a_signal_never_cuts_a_samples_line(tmp_path, monkeypatch):
    real_dumps = json.dumps

    def dumps(record, **kwargs):  # SIGINT arrives while the chunk is being written
        signal.raise_signal(signal.SIGINT)
        return real_dumps(record, **kwargs)

    monkeypatch.setattr(samples.json, "dumps", dumps)
    path = tmp_path / "toy.seed0.jsonl"
    with pytest.raises(Interrupted), interruptible():
        samples.append_samples(path, [{"problem_index": 0, "sample": k, "completion": "x" * 10_000} for k in range(8)])
    monkeypatch.undo()
    assert [r["sample"] for r in read_samples(path)] == list(range(8))


def test_verifier_workers_do_not_get_the_terminals_ctrl_c():
    """A Ctrl-C goes to the terminal's whole process group: a worker in it would die mid-answer and the pool
    would score that answer a parse failure, which an interrupted evaluation would then save."""
    with RewardPool(workers=1) as pool:
        assert pool.score([r"\boxed{4}"], ["4"]).statuses == ("correct",)
        worker = pool._procs[0]
        assert os.getpgid(worker.pid) != os.getpgrp() and os.getsid(worker.pid) != os.getsid(0)


# Write calls that need the shared helpers (rlsteer.io) around them: by method name, by function name, and
# open() in a writing mode. Allowed: inside `with replacing(...)` / `with staged_folder(...)` (and interop's
# equivalents), in rlsteer/io.py, and in the functions below.
WRITE_METHODS = {"write_text", "write_bytes", "save_pretrained", "savefig", "to_csv", "to_json", "to_parquet"}
WRITE_FUNCTIONS = {"save_file", "dump"}  # safetensors, json/pickle .dump
SAVE_MODULES = {"torch", "np", "numpy"}  # torch.save, np.save
ATOMIC_CONTEXTS = {"replacing", "staged_folder"}
ALLOWED = {
    ("rlsteer/metrics.py", "append_metrics"): "append-only log; read_metrics skips a torn last line",
    ("rlsteer/samples.py", "append_samples"): "append-only samples log; read_samples drops a torn last line",
    ("rlsteer/samples.py", "read_samples"): "cuts a torn last line off the samples log",
    ("rlsteer/models.py", "save"): "writes into the staging folder that _save_atomically renames into place",
    ("rlsteer/models.py", "_convert_gguf"): "writes into the staging folder that _save_atomically renames",
    ("rlsteer/models.py", "smollm2_tokenizer"): "writes into a staging folder renamed into place",
    ("rlsteer/figures.py", "png_bytes"): "renders the figure into memory",
    ("rlsteer/lock.py", "_acquire"): "the lock file: opened to hold its flock; its pid and host are informational",
    ("rlsteer/analysis/output.py", "save_figure"): "renders into memory, then write_atomically",
}


def _writes(call: ast.Call) -> str | None:
    """What ``call`` writes to a file, in words (None: it writes nothing)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
    if name in WRITE_METHODS and isinstance(func, ast.Attribute) or name in WRITE_FUNCTIONS:
        return name
    if name == "save" and owner in SAVE_MODULES:
        return f"{owner}.save"
    if name != "open":
        return None
    if owner == "os":
        if any(isinstance(a, ast.Attribute) and a.attr == "devnull" for a in call.args):
            return None
        flags = ast.unparse(call.args[1]) if len(call.args) > 1 else ""
        return "os.open" if re.search(r"O_(WRONLY|RDWR|APPEND|CREAT|TRUNC)", flags) else None
    # open(path, mode), io/gzip.open(path, mode) or Path.open(mode)
    position = 1 if isinstance(func, ast.Name) or owner in {"io", "gzip", "bz2", "lzma", "codecs"} else 0
    mode = next((k.value for k in call.keywords if k.arg == "mode"),
                call.args[position] if len(call.args) > position else ast.Constant("r"))
    if not isinstance(mode, ast.Constant):
        return "open(mode unknown)"
    return f"open({mode.value!r})" if set(str(mode.value)) & set("wax+") else None


def _called(expr: ast.expr) -> str:
    """The name of the function ``expr`` calls ("" when it is not a call)."""
    if not isinstance(expr, ast.Call):
        return ""
    func = expr.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def scan(source: str, rel: str) -> list[str]:
    """Non-atomic writes in one module's source: ``rel:line what (in function)``."""
    found: list[str] = []

    def visit(node: ast.AST, function: str, atomic: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:  # `with replacing(p) as tmp, open(tmp, "wb")`: the open is inside
                visit(item.context_expr, function, atomic)
                atomic = atomic or _called(item.context_expr) in ATOMIC_CONTEXTS
            for child in node.body:
                visit(child, function, atomic)
            return
        if isinstance(node, ast.Call) and not atomic and (rel, function) not in ALLOWED:
            what = _writes(node)
            if what is not None:
                found.append(f"{rel}:{node.lineno} {what} (in {function})")
        for child in ast.iter_child_nodes(node):
            visit(child, function, atomic)

    visit(ast.parse(source), "<module>", False)
    return found


def test_the_scan_finds_non_atomic_writes():
    bad = ("def f(p, t):\n    p.write_text('x')\n    with open(p, 'w') as fh:\n        pass\n"
           "    torch.save(t, p)\n    p.open('ab')\n    open(p, mode='x')\n    save_file(t, p)\n")
    assert [line.split()[1] for line in scan(bad, "m.py")] == [
        "write_text", "open('w')", "torch.save", "open('ab')", "open('x')", "save_file"]
    good = ("def g(p, t):\n    with replacing(p) as tmp:\n        save_file(t, str(tmp))\n"
            "    with open(p) as fh, p.open('rb') as fb:\n        pass\n    write_atomically(p, 'x')\n"
            "    with staged_folder(p) as s:\n        (s / 'a').write_text('x')\n")
    assert scan(good, "m.py") == []


def test_every_file_rlsteer_writes_is_written_atomically():
    found = []
    for path in sorted((ROOT / "rlsteer").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel != "rlsteer/io.py":  # the helpers themselves
            found += scan(path.read_text(encoding="utf-8"), rel)
    assert found == [], "write through rlsteer.io (write_atomically, replacing, staged_folder) instead:\n" + \
        "\n".join(found)


# ------------------------------------------------------------------------------------- train, in process


def test_sigterm_mid_update_and_sigint_while_logging_then_resume_bit_for_bit(tmp_path, reference, monkeypatch,
                                                                             capsys):
    run = tmp_path / "run"
    calls = {"n": 0}

    def after_update(optimizer, args, kwargs):  # SIGTERM right after step 3's Adam update, before it is logged
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGTERM)

    handle = register_optimizer_step_post_hook(after_update)
    try:
        code = main(["train", str(SMOKE), f"run.dir={run}", *FAST, "run.checkpoint_every=100"])
    finally:
        handle.remove()
    assert code == 143
    line = capsys.readouterr().err
    assert line == (f"rlsteer: interrupted by SIGTERM; 2 of {STEPS} steps done, checkpoint "
                    f"{run / 'checkpoints' / 'step-2'}; resume with: rlsteer train {run / 'config.yaml'} --resume\n")
    assert assert_consistent(run, reference) == 2  # the half-done step 3 was rolled back, not saved

    real = train_module.append_metrics

    def append(path, record):  # SIGINT while step 5 is being logged: the step finishes first
        if record["step"] == 5:
            signal.raise_signal(signal.SIGINT)
        real(path, record)

    monkeypatch.setattr(train_module, "append_metrics", append)
    assert main(shlex.split(line.split("resume with: ")[1])[1:]) == 130  # the printed command, as printed
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and line.startswith(f"rlsteer: interrupted by SIGINT; 5 of {STEPS} steps done, ")
    assert assert_consistent(run, reference) == 5  # checkpointed on the way out (checkpoint_every is 100)
    monkeypatch.undo()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "rew')  # as if a later kill -9 had torn a line
    assert main(["train", str(run / "config.yaml"), "--resume"]) == 0
    assert_finished_like(run, reference)


def test_resume_without_a_checkpoint_starts_the_metrics_afresh(tmp_path):
    cfg = load_config(TrainConfig, SMOKE, [f"run.dir={tmp_path / 'run'}", *FAST, "rl.steps=2"])
    run = train_module.prepare_run_dir(cfg).path
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "rew')  # killed before its first checkpoint
    (run / ".vectors.safetensors.0123abcd.tmp").write_bytes(b"half")  # and in the middle of a write
    train(cfg, resume=True, log=lambda _: None)
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert "reward_mean" in read_metrics(run / "metrics.jsonl")[0]
    assert [p.name for p in run.rglob(".*")] == []


# ------------------------------------------------------------------------------------- train, killed from outside


class Child:
    """``python -m rlsteer.cli …`` with its output lines collected as they come."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "rlsteer.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.out = b""

    def wait_for_step(self, step: int, timeout: float = 120) -> None:
        """Until the child has printed the metrics line of ``step``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while not re.search(rb"^step +%d " % step, self.out, re.M):
            assert time.monotonic() < deadline and self.proc.poll() is None, self.out.decode()
            if select.select([self.proc.stdout], [], [], 0.05)[0]:
                self.out += os.read(self.proc.stdout.fileno(), 1 << 16)

    def stop(self, signum: int) -> tuple[int, str]:
        self.proc.send_signal(signum)
        _, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, err.decode()


def test_kill_9_and_sigterm_at_several_points_then_resume_bit_for_bit(tmp_path, reference):
    """kill -9 as step 1's metrics line appears, SIGTERM as step 2's does, kill -9 at a random moment from step
    3's line on (in its checkpoint write, in steps 4–5, or later); each time resumed with --resume."""
    run = tmp_path / "run"
    args = ["train", "smoke", f"run.dir={run}", *FAST, "run.checkpoint_every=1"]
    child = Child(args)
    child.wait_for_step(1)
    assert child.stop(signal.SIGKILL)[0] == -signal.SIGKILL

    child = Child([*args, "--resume"])
    child.wait_for_step(2)
    code, err = child.stop(signal.SIGTERM)
    assert code == 143, err
    message = [line for line in err.splitlines() if line.startswith("rlsteer:")]
    assert message == [err.strip().splitlines()[-1]]
    assert message[0].startswith("rlsteer: interrupted by SIGTERM; ")
    assert message[0].endswith(f"resume with: rlsteer train {run / 'config.yaml'} --resume")
    assert assert_consistent(run, reference) >= 2

    child = Child([*args, "--resume"])
    child.wait_for_step(3)
    delay = random.uniform(0.0, 0.8)
    time.sleep(delay)
    child.stop(signal.SIGKILL)

    child = Child([*args, "--resume"])
    _, err = child.proc.communicate(timeout=120)
    assert child.proc.returncode == 0, f"killed {delay:.2f} s after step 3: {err.decode()}"
    assert_finished_like(run, reference)


# ------------------------------------------------------------------------------------- eval


def test_sigterm_during_eval_keeps_whole_samples_and_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    bench = tmp_path / "toy.jsonl"
    bench.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)})
                             + "\n" for i in range(4)))
    args = ["eval", "--protocol", "gsm8k", "--model", "tiny-random-llama", "--benchmarks", str(bench), "--seeds",
            "0", "protocol.n={toy: 2}", "protocol.max_new_tokens=4", "reward.workers=0", "engine.chunk=2"]
    whole = evaluate(load_config(EvalConfig, "eval/gsm8k", [
        "model.name=tiny-random-llama", f"protocol.benchmarks=[{bench}]", "protocol.seeds=[0]", "protocol.n={toy: 2}",
        "protocol.max_new_tokens=4", "reward.workers=0", "engine.chunk=2", f"out={tmp_path / 'whole'}"]),
        log=lambda _: None)[0]

    real = ev.make_backend
    calls = {"n": 0}

    class SignalledBackend:  # the real backend; SIGTERM arrives while the third chunk is being sampled
        def __init__(self, inner):
            self.inner = inner

        def generate(self, *a):
            calls["n"] += 1
            if calls["n"] == 3:
                signal.raise_signal(signal.SIGTERM)
            return self.inner.generate(*a)

        def close(self):
            self.inner.close()

    monkeypatch.setattr(ev, "make_backend", lambda *a, **k: SignalledBackend(real(*a, **k)))
    out = tmp_path / "cut"
    assert main([*args, f"out={out}"]) == 143
    err = capsys.readouterr().err  # the progress bars, then one line
    assert err.endswith("\n") and err.splitlines()[-1] == (
        f"rlsteer: interrupted by SIGTERM; the finished samples are saved; resume with: "
        f"{shlex.join(['rlsteer', *args, f'out={out}'])}")
    samples = out / "samples" / "toy.seed0.jsonl"
    assert samples.read_text().endswith("\n") and len(read_samples(samples)) == 4  # chunks 1 and 2, whole
    assert not (out / "results.json").exists()
    monkeypatch.undo()
    assert main([*args, f"out={out}"]) == 0
    key = lambda r: (r["problem_index"], r["sample"])  # noqa: E731
    assert sorted(read_samples(samples), key=key) == sorted(
        read_samples(tmp_path / "whole" / "samples" / "toy.seed0.jsonl"), key=key)
    assert json.loads((out / "results.json").read_text())["benchmarks"] == whole["benchmarks"]
