"""The RLOO trainer: the smoke preset learns, base weights never change, resume is bit-exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlsteer.config import TrainConfig, load_config
from rlsteer.metrics import read_metrics
from rlsteer.models import load_model
from rlsteer.rl import masked_advantages, token_logprobs
from rlsteer.runstart import RunStartError
from rlsteer.steering import SteeringVectors, steer
from rlsteer.train import TrainingError, batch_indices, train

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def smoke(tmp_path: Path, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, SMOKE, [f"run.dir={tmp_path / 'run'}", *overrides])


def test_smoke_preset_learns(tmp_path):
    run = train(smoke(tmp_path), log=lambda _: None)
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert metrics[0]["reward_mean"] < 0
    assert sum(m["reward_mean"] for m in metrics[-5:]) / 5 > 0.9
    for key in ("accuracy", "zero_adv_groups", "len_mean", "truncated", "grad_norm", "time_generate",
                "time_reward", "time_backward", "time_optim", "tokens_per_s", "norm/resid_post.3"):
        assert key in metrics[-1]
    vectors = SteeringVectors.load(run / "vectors.safetensors")
    assert vectors.metadata["template"] == "qwen-math" and vectors.metadata["model"].startswith("tiny-random-llama")
    assert (run / "checkpoints" / "step-30" / "state.json").is_file()
    assert (run / "config.yaml").is_file()


def test_base_weights_are_bit_unchanged(tmp_path, monkeypatch):
    import rlsteer.train as train_module

    seen = {}
    real_load = train_module.load_model

    def spy(*args, **kwargs):
        model, tok = real_load(*args, **kwargs)
        seen["model"] = model
        seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model, tok

    monkeypatch.setattr(train_module, "load_model", spy)
    train(smoke(tmp_path, "rl.steps=3"), log=lambda _: None)
    after = seen["model"].state_dict()
    assert all(torch.equal(seen["before"][k], after[k]) for k in after)
    assert all(p.grad is None for p in seen["model"].parameters())


@pytest.mark.parametrize(("site", "layer", "first_saving"), [("resid_post", 1, 2), ("attn_out", 2, 2)])
def test_nothing_below_the_lowest_steered_layer_is_saved_for_backward(site, layer, first_saving):
    model, tok = load_model("tiny-random-llama")
    layers = model.model.layers
    current: list[int | None] = [None]
    saved = [0] * len(layers)
    for i, block in enumerate(layers):
        block.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i))
        block.register_forward_hook(lambda m, a, o: current.__setitem__(0, None))

    def pack(t):
        if current[0] is not None:
            saved[current[0]] += 1
        return t

    sv = SteeringVectors(64, layers=[layer], site=site)
    seqs = [(tuple(tok.encode("1 + 2 =")), (5, 6, 7))]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), steer(model, sv):
        token_logprobs(model, seqs, pad_id=tok.pad_token_id)[0].sum().backward()
    # resid_post at ℓ enters after block ℓ, attn_out inside it: blocks before the first one that sees s
    # keep no activations for backward
    assert all(n == 0 for n in saved[:first_saving]), saved
    assert all(n > 0 for n in saved[first_saving:]), saved


def test_masked_advantages_leave_truncated_samples_out():
    rewards = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    keep = torch.tensor([[True, True, True, False]])
    adv = masked_advantages(rewards, keep, "loo")
    torch.testing.assert_close(adv, torch.tensor([[2.0, -1.0, -1.0, 0.0]]))  # LOO over the 3 kept
    assert masked_advantages(rewards, torch.ones_like(keep), "loo").abs().sum() > 0


def test_batches_cover_each_epoch_once_and_are_deterministic():
    steps = [batch_indices(10, s, 3, seed=5) for s in range(6)]  # 3 batches per epoch (drop_last)
    epoch0 = sorted(i for b in steps[:3] for i in b)
    assert len(set(epoch0)) == 9 and steps[:3] != steps[3:]
    assert steps == [batch_indices(10, s, 3, seed=5) for s in range(6)]


def test_orthogonal_training_stays_orthogonal(tmp_path):
    direction = SteeringVectors.from_dict({3: torch.randn(64)})
    path = direction.save(tmp_path / "fixed.safetensors")
    run = train(smoke(tmp_path, "rl.steps=6", f"steering.orthogonal_to=[{path}]"), log=lambda _: None)
    trained = SteeringVectors.load(run / "vectors.safetensors").vector(("resid_post", 3))
    fixed = direction.vector(("resid_post", 3))
    assert trained.norm() > 0.01
    assert abs(float(trained @ fixed)) / float(trained.norm() * fixed.norm()) < 1e-6


def test_run_directory_rules(tmp_path):
    train(smoke(tmp_path, "rl.steps=1"), log=lambda _: None)
    with pytest.raises(RunStartError, match=r"already holds a run \(checkpointed up to step 1\); pass --resume"):
        train(smoke(tmp_path, "rl.steps=1"), log=lambda _: None)
    with pytest.raises(RunStartError, match=r"config differs .* in rl.seed \(0 → 1\); resume with the same"):
        train(smoke(tmp_path, "rl.steps=2", "rl.seed=1", "optim.lr=0.5"), resume=True, log=lambda _: None)
    with pytest.raises(TrainingError, match="fewer than rl.prompts_per_step"):
        train(smoke(tmp_path / "other", "data.dataset=synthetic-arithmetic:n=4"), log=lambda _: None)


def test_killed_and_resumed_run_ends_with_the_same_vector(tmp_path):
    steps, every = 16, 3
    reference = train(smoke(tmp_path / "ref", f"rl.steps={steps}", f"run.checkpoint_every={every}"),
                      log=lambda _: None)
    run_dir = tmp_path / "killed" / "run"
    cmd = [sys.executable, "-m", "rlsteer.cli", "train", str(SMOKE), f"run.dir={run_dir}", f"rl.steps={steps}",
           f"run.checkpoint_every={every}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / f"step-{2 * every}").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_metrics(run_dir / "metrics.jsonl")) < steps
    subprocess.run([*cmd, "--resume"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    a = SteeringVectors.load(reference / "vectors.safetensors")
    b = SteeringVectors.load(run_dir / "vectors.safetensors")
    assert torch.equal(a.vector(("resid_post", 3)), b.vector(("resid_post", 3)))
    assert [m["step"] for m in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, steps + 1))
