"""Bad input: one ``rlsteer: error:`` line naming the problem and the fix, exit status 2, and
no partial output left behind; the same error from the Python API."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import rlsteer.evaluate as evaluate_module
import rlsteer.train as train_module
from rlsteer import SteeringVectors, load_model
from rlsteer.cli import main
from rlsteer.config import ConfigError, EvalConfig, TrainConfig, load_config
from rlsteer.data import DataError, load_problems
from rlsteer.distributed import DistributedError, World
from rlsteer.errors import OutputError, RlsteerError
from rlsteer.metrics import read_metrics
from rlsteer.models import ModelLoadError
from rlsteer.steering import Entry, SiteError, VectorFileError, patch
from rlsteer.steering.vectors import read_vector_file

MODEL = "tiny-random-qwen3"
#: a tiny evaluation: one problem, two new tokens
EVAL = ["--model", MODEL, "--benchmarks", "synthetic-arithmetic:n=2", "--limit", "1", "protocol.max_new_tokens=2",
        "reward.workers=0"]
#: smaller smoke-run steps (2 prompts × 2 samples)
SMALL = ["rl.prompts_per_step=2", "rl.samples_per_prompt=2"]


def fails(capsys, argv, fragment: str) -> str:
    """Run the CLI; assert exit status 2 and exactly one error line containing ``fragment``; return the line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line[line.index("rlsteer: error: "):] for line in err.splitlines() if "rlsteer: error: " in line]
    assert code == 2, err
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    return lines[0]


def files(root: Path) -> list[str]:
    """Every file under ``root`` (what a failed command must not have left behind)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def temp_names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name or ".old" in p.name)


def vector_file(path: Path, d_model: int = 64, entries=None, model: str = MODEL) -> Path:
    """A random vector file (``resid_post.2`` unless ``entries`` says otherwise) recording ``model``."""
    sv = SteeringVectors(d_model, entries or [Entry("resid_post", 2)], metadata={"model": model,
                                                                               "template": "qwen-math"})
    with torch.no_grad():
        for e in sv.entries:
            sv.parameter(e).normal_()
    return sv.save(path)


# ------------------------------------------------------------------------------------ unknown model


def test_unknown_model_suggests_the_closest_alias(tmp_path, capsys):
    fix = ("unknown model 'tiny-random-lama': not a built-in alias; did you mean 'tiny-random-llama'? Pass an "
           "alias (`rlsteer models` lists them), a folder written by save_pretrained, a .gguf file, or a hub id "
           "owner/name")
    fails(capsys, ["eval", *EVAL[:1], "tiny-random-lama", *EVAL[2:], "--out", tmp_path / "eval"], fix)
    fails(capsys, ["train", "smoke", f"run.dir={tmp_path / 'run'}", "model.name=tiny-random-lama"], fix)
    fails(capsys, ["analyze", "lens", vector_file(tmp_path / "v.safetensors"), "--model", "./no/such/model",
                   "--out", tmp_path / "lens"],
          "unknown model './no/such/model': not a built-in alias (smollm2-135m-instruct, tiny-random-llama, ")
    with pytest.raises(ModelLoadError, match="did you mean 'tiny-random-llama'"):
        load_model("tiny-random-lama")
    assert files(tmp_path) == ["v.safetensors"]


# ------------------------------------------------------------------------ vectors of another model


@pytest.mark.parametrize(("d_model", "entries", "message"), [
    (32, [Entry("resid_post", 1)], "these vectors have width 32 (made for Qwen/Qwen3-8B) but the model has "
                                   "d_model=64; load vectors trained for this model"),
    (64, [Entry("resid_post", 9)], "entry resid_post.9: layer 9 is out of range, the model has 4 layers (0..3); "
                                   "made for Qwen/Qwen3-8B"),
    (64, [Entry("steer_q", 2, head=6)], "entry steer_q.2.6: head 6 is out of range, the model has 4 query heads "
                                        "(0..3); made for Qwen/Qwen3-8B"),
], ids=["width", "depth", "heads"])
def test_vectors_of_another_model(tmp_path, capsys, d_model, entries, message):
    path = vector_file(tmp_path / "v.safetensors", d_model, entries, model="Qwen/Qwen3-8B")
    fails(capsys, ["eval", path, *EVAL, "--out", tmp_path / "eval"], message)
    fails(capsys, ["analyze", "lens", path, "--model", MODEL, "--out", tmp_path / "lens"], message)
    model, _ = load_model(MODEL)
    with pytest.raises(VectorFileError) as err:
        SteeringVectors.load(path, model)
    assert message in str(err.value)
    assert files(tmp_path) == ["v.safetensors"]


# ----------------------------------------------------------------------- layer or head out of range


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "smoke", "steering.layers=[99]"],
     "steering.layers has 99, out of range: tiny-random-llama has 4 layers (0..3); use steering.layers=[3] or 'all'"),
    (["train", "smoke", "steering.sites=[steer_v]", "steering.head=7"],
     "steering.head=7 is out of range for steer_v: tiny-random-llama has 2 KV heads (0..1)"),
    (["train", "smoke", "steering.sites=[steer_q]"],
     "steering.sites has steer_q, which needs steering.head (e.g. steering.head=0)"),
    (["eval", "VECTORS", *EVAL, "--patch", "steer_v", "--layer", "99", "--head", "7"],
     "patch_layer 99 is not one of the file's resid_post/resid_pre layers [2]; pass --layer (target.patch_layer) "
     "with one of them"),
    (["eval", "VECTORS", *EVAL, "--patch", "steer_v", "--layer", "2", "--head", "7"],
     "target.patch_head=7 is out of range for steer_v: the model has 2 KV heads; pass --head 0..1"),
    (["eval", "LAST", *EVAL, "--patch", "full"],
     "target.patch: the vector feeds block 4, which the model does not have (4 layers, 0..3); patch a vector of "
     "an earlier layer (--layer)"),
], ids=["train-layer", "train-head", "train-no-head", "eval-patch-layer", "eval-patch-head", "eval-last-block"])
def test_layer_or_head_out_of_range(tmp_path, capsys, argv, message):
    inputs = tmp_path / "inputs"
    swap = {"VECTORS": vector_file(inputs / "v.safetensors"),
            "LAST": vector_file(inputs / "last.safetensors", entries=[Entry("resid_post", 3)])}
    out = ["--out", tmp_path / "out"] if argv[0] == "eval" else [f"run.dir={tmp_path / 'out'}"]
    fails(capsys, [swap.get(a, a) for a in argv] + out, message)
    assert not (tmp_path / "out").exists()


def test_api_layer_and_head_checks():
    model, _ = load_model(MODEL)
    with pytest.raises(SiteError, match=r"patch layer 99 is out of range: the model has 4 layers \(0\.\.3\)"):
        patch(model, torch.zeros(64), layer=99, variant="steer_v", heads=1)
    with pytest.raises(SiteError, match=r"steer_v: head 7 is out of range, the model has 2 KV heads \(0\.\.1\)"):
        patch(model, torch.zeros(64), layer=2, variant="steer_v", heads=7)
    with pytest.raises(VectorFileError, match="layer 99 is out of range"):
        SteeringVectors(64, layers=[99]).validate(model)


# ------------------------------------------------------------------- truncated or corrupted files


def _truncated(data: bytes) -> bytes:
    return data[:-10]


def _header_byte(data: bytes) -> bytes:
    return data[:12] + b"\xff" + data[13:]


def _wrong_shape(data: bytes) -> bytes:
    assert b'"shape":[64]' in data
    return data.replace(b'"shape":[64]', b'"shape":[65]', 1)


@pytest.mark.parametrize("damage", [_truncated, _header_byte, _wrong_shape], ids=["truncated", "flipped", "header"])
def test_truncated_or_corrupted_vector_file(tmp_path, capsys, damage):
    path = tmp_path / "v.safetensors"
    path.write_bytes(damage(vector_file(tmp_path / "good.safetensors").read_bytes()))
    message = (f"{path} is not a readable safetensors vector file (")
    fix = "rlsteer reads only safetensors files written by SteeringVectors.save or `rlsteer export`"
    assert fix in fails(capsys, ["inspect", path], message)
    assert fix in fails(capsys, ["eval", path, *EVAL, "--out", tmp_path / "eval"], message)
    with pytest.raises(VectorFileError, match="is not a readable safetensors vector file"):
        SteeringVectors.load(path)
    assert files(tmp_path) == ["good.safetensors", "v.safetensors"]


# ---------------------------------------------------------------------------- pickles as vectors


@pytest.mark.parametrize(("write", "kind"), [
    (lambda p: torch.save({"resid_post.2": torch.zeros(64)}, p), "a zip archive (torch.save's format)"),
    (lambda p: p.write_bytes(pickle.dumps({"resid_post.2": [0.0] * 64}, protocol=4)), "a Python pickle (torch.save)"),
    (lambda p: p.write_bytes(b"just text, not tensors"), None),
], ids=["torch.save", "pickle", "text"])
def test_pickles_are_never_unpickled(tmp_path, capsys, no_unpickling, write, kind):
    path = tmp_path / "v.safetensors"
    write(path)
    message = (f"{path} is {kind}, not a safetensors vector file; rlsteer never unpickles files: convert it with "
               "`rlsteer import` or save the vectors with SteeringVectors.save" if kind is not None
               else f"{path} is not a readable safetensors vector file (")
    fails(capsys, ["eval", path, *EVAL, "--out", tmp_path / "eval"], message)
    fails(capsys, ["analyze", "lens", path, "--model", MODEL, "--out", tmp_path / "lens"], message)
    fails(capsys, ["inspect", path], message)
    with pytest.raises(VectorFileError):
        SteeringVectors.load(path)
    assert no_unpickling == []
    assert files(tmp_path) == ["v.safetensors"]


# ------------------------------------------------------------------------------------- bad datasets


def test_rows_without_problem_or_answer_and_empty_datasets(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    bad = data / "bad.jsonl"
    bad.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n{"answer": "3"}\n')
    empty = data / "empty.jsonl"
    empty.write_text("\n")
    rows = (f"2 rows without a problem or an answer: {bad}:2 (no answer), {bad}:3 (no problem); fix or remove "
            "them")
    nothing = (f"dataset '{empty}' has no problems; give a file with one JSON object per line with problem and "
               "answer fields, or another dataset")
    out, run = tmp_path / "eval", tmp_path / "run"
    fails(capsys, ["eval", *EVAL[:2], "--benchmarks", bad, "--out", out], rows)
    fails(capsys, ["train", "smoke", f"run.dir={run}", f"data.dataset={bad}"], rows)
    fails(capsys, ["eval", *EVAL[:2], "--benchmarks", empty, "--out", out], nothing)
    fails(capsys, ["train", "smoke", f"run.dir={run}", f"data.dataset={empty}"], nothing)
    fails(capsys, ["eval", *EVAL[:2], "--benchmarks", "synthetic-arithmetic:n=2", "--limit", "0", "--out", out],
          "protocol.limit=0 is out of range: it must be at least 1")
    fails(capsys, ["train", "smoke", f"run.dir={run}", "data.limit=0", "data.dataset=synthetic-arithmetic:n=2"],
          "data.limit=0 is out of range: it must be at least 1")
    fails(capsys, ["eval", *EVAL[:2], "--benchmarks", "synthetic-arithmetic:n=abc", "--out", out],
          "synthetic option n='abc' needs an integer, e.g. synthetic-arithmetic:n=200")
    with pytest.raises(DataError, match=r"bad\.jsonl:2 \(no answer\)"):
        load_problems(str(bad))
    with pytest.raises(DataError, match="has no problems after limit=0"):
        load_problems("synthetic-arithmetic:n=3", limit=0)
    assert files(tmp_path) == ["data/bad.jsonl", "data/empty.jsonl"]


# --------------------------------------------------------------------------------- NaN in training


@pytest.mark.parametrize(("where", "made"), [("loss", "loss, grad_norm, vector resid_post.3"),
                                             ("grads", "grad_norm, vector resid_post.3"),
                                             ("vectors", "vector resid_post.3")])
def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch, where, made):
    """NaN or inf injected at step 2 of a smoke run: in the loss, in the gradients, or in the updated vectors."""
    state = {"step": 0, "poisoned": 0}
    real = {name: getattr(train_module, name) for name in ("rl_step", "policy_loss", "masked_advantages",
                                                           "sum_gradients")}

    def rl_step(step, *args, **kwargs):
        state["step"] = step + 1
        record = real["rl_step"](step, *args, **kwargs)
        if where == "vectors" and step + 1 == 2:
            vectors = args[4]  # rl_step(step, prompts, problems, model, tok, vectors, …)
            with torch.no_grad():
                vectors.parameter(vectors.entries[0])[0] = float("inf")
            state["poisoned"] += 1
        return record

    def masked_advantages(rewards, *args):  # the random model earns no reward yet: give step 2 a signal
        adv = real["masked_advantages"](rewards, *args)
        return torch.ones_like(adv) if where == "loss" and state["step"] == 2 else adv

    def policy_loss(*args):
        loss = real["policy_loss"](*args)
        if where == "loss" and state["step"] == 2:
            state["poisoned"] += 1
            return loss * float("nan")
        return loss

    def sum_gradients(params, world):
        stepped = real["sum_gradients"](params, world)
        if where == "grads" and state["step"] == 2:
            state["poisoned"] += 1
            for param in params:
                param.grad = torch.full_like(param, float("nan"))
            return True
        return stepped

    for name, fn in (("rl_step", rl_step), ("policy_loss", policy_loss), ("masked_advantages", masked_advantages),
                     ("sum_gradients", sum_gradients)):
        monkeypatch.setattr(train_module, name, fn)
    run = tmp_path / "run"
    fails(capsys, ["train", "smoke", f"run.dir={run}", "rl.steps=3", "run.checkpoint_every=1", *SMALL],
          f"step 2 made {made} NaN or inf, so the run stopped without saving it; the last good checkpoint is "
          f"{run / 'checkpoints' / 'step-1'}; lower optim.lr (or optim.max_grad_norm) and rerun with --resume")
    assert state["poisoned"] > 0
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl")] == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1"]
    last = read_vector_file(run / "vectors.safetensors")[0]
    assert torch.equal(last["resid_post.3"], read_vector_file(run / "checkpoints/step-1/vectors.safetensors")[0][
        "resid_post.3"])
    assert temp_names(run) == []


# ------------------------------------------------------------------------------- conflicting options


def test_greedy_with_several_samples(tmp_path, capsys):
    message = ("protocol.n asks for several samples (aime24: 4) but protocol.temperature=0 (greedy) gives one "
               "sample per problem; drop protocol.n or set protocol.temperature > 0")
    fails(capsys, ["eval", "--protocol", "paper-greedy", "protocol.n={aime24: 4}", "--dry-run"], message)
    fails(capsys, ["eval", "--protocol", "paper", "protocol.temperature=0", "protocol.n={aime24: 4}", "--dry-run"],
          message)
    protocol = tmp_path / "greedy.yaml"
    protocol.write_text("protocol:\n  temperature: 0\n  n: {aime24: 4}\n")
    fails(capsys, ["eval", "--protocol", protocol, "--dry-run"], message)
    with pytest.raises(ConfigError, match=r"protocol\.n asks for several samples"):
        load_config(EvalConfig, "eval/paper-greedy", ["protocol.n={aime24: 4}"])
    # the documented forcing: making a sampled protocol greedy takes one sample everywhere
    cfg = load_config(EvalConfig, "eval/paper", ["protocol.temperature=0"])
    assert cfg.protocol.n["aime24"] == 32 and cfg.protocol.samples("aime24") == 1
    assert main(["eval", "--protocol", "paper", "protocol.temperature=0", "--dry-run"]) == 0
    capsys.readouterr()


def test_prefix_that_tokenises_to_nothing(tmp_path, capsys, monkeypatch):
    real_load = evaluate_module.load_model

    def load_with_blind_tokenizer(*args, **kwargs):
        model, tok = real_load(*args, **kwargs)
        encode = tok.encode
        tok.encode = lambda text, **kw: [] if text == "\u200b" else encode(text, **kw)  # a text it drops
        return model, tok

    monkeypatch.setattr(evaluate_module, "load_model", load_with_blind_tokenizer)
    fails(capsys, ["eval", *EVAL, "--prefix", "\u200b", "--out", tmp_path / "blind"],
          "prefix '\\u200b' tokenises to nothing; give text the tokenizer knows, such as 'To', or no prefix at all "
          "(leave it unset; `--prefix \"\"` in rlsteer eval)")
    assert not (tmp_path / "blind").exists()
    assert main(["eval", *EVAL, "--prefix", "", "--out", str(tmp_path / "none")]) == 0  # "" means no prefix
    capsys.readouterr()
    protocol = json.loads((tmp_path / "none" / "protocol.json").read_text())
    assert protocol["config"]["target"]["prefix"] is None


def test_micro_batch_budget_must_be_positive(tmp_path, capsys):
    for key in ("micro_batch_tokens", "micro_batch_size"):
        run = tmp_path / key
        assert main(["train", "smoke", f"run.dir={run}", f"rl.{key}=0", *SMALL]) == 2
        assert f"rl.{key}" in capsys.readouterr().err
        assert not run.exists()


def test_prompt_groups_must_split_over_ranks():
    with pytest.raises(DistributedError, match="7 prompt groups cannot be split evenly over 2 ranks"):
        World(rank=0, size=2).shard(7)
    assert list(World(rank=1, size=2).shard(8)) == [4, 5, 6, 7]


# ------------------------------------------------------------------------- unwritable output folders


def _failing_replace(monkeypatch, under: Path, error: OSError, name: str | None = None) -> None:
    """``os.replace`` fails with ``error`` for targets under ``under`` (named ``name``, if given)."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        dst = Path(dst)
        if dst.is_relative_to(under) and (name is None or dst.name == name):
            raise error
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


FULL = OSError(errno.ENOSPC, "No space left on device")
DENIED = PermissionError(errno.EACCES, "Permission denied")


def test_full_disk_when_a_run_starts(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    _failing_replace(monkeypatch, tmp_path, FULL)
    fails(capsys, ["train", "smoke", f"run.dir={run}"],
          f"cannot write {run / 'config.yaml'}: No space left on device; free some disk space or write elsewhere")
    assert files(tmp_path) == [] and temp_names(tmp_path) == []


def test_full_disk_at_a_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    _failing_replace(monkeypatch, tmp_path, FULL, name="step-2")
    fails(capsys, ["train", "smoke", f"run.dir={run}", "rl.steps=3", "run.checkpoint_every=1", *SMALL],
          f"cannot write {run / 'checkpoints' / 'step-2'}: No space left on device; free some disk space")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1"]
    assert temp_names(tmp_path) == []


def test_unwritable_evaluation_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    _failing_replace(monkeypatch, tmp_path, DENIED)
    fails(capsys, ["eval", *EVAL, "--out", out],
          f"cannot write {out / 'protocol.json'}: Permission denied; choose a writable folder or fix its permissions")
    assert files(tmp_path) == [] and temp_names(tmp_path) == []
    vectors = SteeringVectors(64, layers=[1])
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'v.safetensors'}: Permission denied"):
        vectors.save(tmp_path / "v.safetensors")
    assert files(tmp_path) == []


def test_any_other_file_system_error_is_one_line(tmp_path, capsys, monkeypatch):
    import rlsteer.cli as cli

    def broken_disk(args):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "x"))

    monkeypatch.setattr(cli, "_inspect", broken_disk)
    fails(capsys, ["inspect", tmp_path / "x"],
          f"rlsteer: error: {tmp_path / 'x'}: Input/output error; check the path, its permissions and free space")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        fails(capsys, ["train", "smoke", f"run.dir={folder / 'run'}"], f"cannot write {folder / 'run'}")
        fails(capsys, ["eval", *EVAL, "--out", folder / "eval"], f"cannot write {folder / 'eval'}")
        assert files(folder) == []
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------------------- unknown config keys


def test_unknown_config_keys_suggest_the_closest(tmp_path, capsys):
    run = tmp_path / "run"
    fails(capsys, ["train", "smoke", f"run.dir={run}", "rl.stepz=3"],
          "unknown config key 'rl.stepz'; did you mean 'rl.steps'?")
    config = tmp_path / "train.yaml"
    config.write_text("model: {name: tiny-random-llama}\noptim: {lrr: 0.1}\n")
    fails(capsys, ["train", config, f"run.dir={run}"], "unknown config key 'optim.lrr'; did you mean 'optim.lr'?")
    fails(capsys, ["eval", *EVAL, "protocol.temprature=0", "--out", tmp_path / "eval"],
          "unknown config key 'protocol.temprature'; did you mean 'protocol.temperature'?")
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text("protocol: {benchmarks: [gsm8k], seed: [0]}\n")
    fails(capsys, ["eval", "--protocol", protocol, "--dry-run"],
          "unknown config key 'protocol.seed'; did you mean 'protocol.seeds'?")
    fails(capsys, ["train", "smoke", "rl.steps.x=3", "--dry-run"],
          "cannot set rl.steps.x: steps is a value, not a section")
    fails(capsys, ["train", "smoke", "rl.steps=[1", "--dry-run"],
          "override rl.steps='[1' is not a valid YAML value (while parsing a flow sequence); quote strings")
    with pytest.raises(ConfigError, match="did you mean 'rl.steps'"):
        load_config(TrainConfig, "smoke", ["rl.stepz=3"])
    assert files(tmp_path) == ["protocol.yaml", "train.yaml"]


def test_every_cli_error_is_an_rlsteer_error():
    assert all(issubclass(e, RlsteerError) for e in (ConfigError, DataError, VectorFileError, OutputError,
                                                     ModelLoadError, DistributedError, SiteError))
