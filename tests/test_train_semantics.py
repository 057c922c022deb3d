"""The training step's semantics, checked through real short runs: per-layer learning rates, the warmup, the
loss normaliser (generated tokens of the step, not samples), and log-probs from an fp32 log-softmax under a
bf16 model (docs/semantics.md#objective).

Each test names the wrong implementation it kills. The runs use the smoke preset (tiny random model, first-token
reward); the step's rollouts and rewards are observed by wrapping the real backend and scorer, and the expected
loss is recomputed from them with a plain forward of the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rlsteer.train as train_module
from rlsteer.config import TrainConfig, load_config
from rlsteer.metrics import read_metrics
from rlsteer.models import load_model
from rlsteer.rl import token_logprobs
from rlsteer.steering import SteeringVectors, steer
from rlsteer.train import train

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def smoke(tmp_path: Path, *overrides: str) -> TrainConfig:
    """The smoke preset at a temperature where about one sample in ten is rewarded, so that the first step
    already has groups with mixed rewards (non-zero advantages)."""
    return load_config(TrainConfig, SMOKE, [f"run.dir={tmp_path / 'run'}", "rollout.temperature=0.1", *overrides])


def vectors_after(run: Path, step: int) -> SteeringVectors:
    return SteeringVectors.load(run / "checkpoints" / f"step-{step}" / "vectors.safetensors")


def test_each_layer_moves_by_its_own_learning_rate(tmp_path):
    """Kills: ignoring ``steering.lr_per_layer`` (every layer at ``optim.lr``).

    Adam's first update moves every coordinate with a non-zero gradient by lr·g/(|g| + eps) ≈ ±lr, so after
    one step (no warmup) the largest coordinate of each vector is its layer's lr.
    """
    run = train(smoke(tmp_path, "steering.layers=[1,3]", "steering.lr_per_layer={1: 0.001}", "optim.lr=0.1",
                      "optim.warmup_steps=0", "rl.steps=1"), log=lambda _: None)
    after = SteeringVectors.load(run / "vectors.safetensors")
    slow = after.vector(("resid_post", 1)).abs().max().item()
    fast = after.vector(("resid_post", 3)).abs().max().item()
    assert slow == pytest.approx(0.001, rel=1e-3)
    assert fast == pytest.approx(0.1, rel=1e-3)


def test_warmup_gives_the_first_update_lr_zero_then_rises_linearly(tmp_path):
    """Kills: removing the warmup (or applying it off by one, step k at lr·(k+1)/W).

    transformers' ``constant_with_warmup`` (the authors' schedule): the update of 0-based step k uses lr·k/W
    while k < W. With W = 4: the first update leaves the zero vector at zero, the second moves it by about lr/4.
    """
    run = train(smoke(tmp_path, "optim.lr=0.1", "optim.warmup_steps=4", "rl.steps=2", "run.checkpoint_every=1"),
                log=lambda _: None)
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["lr"] for m in metrics] == [0.0, pytest.approx(0.025)]
    assert torch.equal(vectors_after(run, 1).vector(("resid_post", 3)), torch.zeros(64))
    moved = vectors_after(run, 2).vector(("resid_post", 3)).abs().max().item()
    assert moved == pytest.approx(0.025, rel=0.2)  # Adam's second update is ±lr·m̂/√v̂, about ±lr


def test_the_loss_is_normalised_by_the_generated_tokens_of_the_step(tmp_path, monkeypatch):
    """Kills: dividing by the number of samples (or by anything but the step's generated tokens).

    The first step runs with zero vectors, so its loss −Σ a·Σ_t log π / T_step and gradient can be recomputed
    from the observed rollouts and rewards with the plain model. Completions of up to 6 tokens make T_step
    several times the number of samples.
    """
    seen: dict[str, list] = {"rollouts": [], "rewards": []}
    real_backend, real_scorer = train_module.make_backend, train_module.make_scorer

    def observed_backend(*args, **kwargs):
        backend = real_backend(*args, **kwargs)
        generate = backend.generate

        def recording(requests, steering, sampling):
            out = generate(requests, steering, sampling)
            seen["rollouts"].append(out)
            return out

        backend.generate = recording  # type: ignore[method-assign]
        return backend

    def observed_scorer(*args, **kwargs):
        scorer = real_scorer(*args, **kwargs)
        score = scorer.score

        def recording(rollouts, problems):
            out = score(rollouts, problems)
            seen["rewards"].append(out.rewards)
            return out

        scorer.score = recording  # type: ignore[method-assign]
        return scorer

    monkeypatch.setattr(train_module, "make_backend", observed_backend)
    monkeypatch.setattr(train_module, "make_scorer", observed_scorer)
    cfg = smoke(tmp_path, "rl.steps=1", "rollout.max_new_tokens=6", "optim.warmup_steps=0")
    run = train(cfg, log=lambda _: None)
    record = read_metrics(run / "metrics.jsonl")[0]

    rollouts, rewards = seen["rollouts"][0], torch.tensor(seen["rewards"][0])
    n = cfg.rl.samples_per_prompt
    tokens = sum(r.num_tokens for r in rollouts)  # the stop token counts when it was generated
    assert tokens > 2 * len(rollouts)  # samples and tokens differ enough to tell the normalisers apart
    grouped = rewards.view(-1, n)  # [prompts, N]
    adv = (grouped - (grouped.sum(1, keepdim=True) - grouped) / (n - 1)).flatten()  # leave-one-out
    assert adv.abs().sum() > 0

    model, _ = load_model(cfg.model.name)
    vector = torch.zeros(64, requires_grad=True)  # the step's starting point: zero at resid_post 3
    total = torch.zeros((), dtype=torch.float64)
    with steer(model, {3: vector}):
        for r, a in zip(rollouts, adv.tolist(), strict=True):
            ids = torch.tensor([r.request.prompt_ids + r.token_ids])
            logits = model(ids).logits[0, r.request.prompt_len - 1:-1].double() / cfg.rollout.temperature
            logprob = logits.log_softmax(-1).gather(-1, torch.tensor(r.token_ids)[:, None]).sum()
            total = total - a * logprob
    loss = total / tokens
    loss.backward()
    assert record["loss"] == pytest.approx(loss.item(), rel=1e-4, abs=1e-7)
    assert record["grad_norm"] == pytest.approx(vector.grad.norm().item(), rel=1e-3)


# ------------------------------------------------------------------------------------ fp32 log-softmax


@pytest.fixture(scope="module")
def bf16_model():
    return load_model("tiny-random-llama", dtype=torch.bfloat16)


def test_logprobs_of_a_bf16_model_come_from_an_fp32_log_softmax(bf16_model):
    """Kills: a log-softmax in the model's dtype (bf16), with or without a cast to float afterwards.

    One unpadded sequence gives the same bf16 logits as a plain forward, so the log-probs must equal the
    float64 log-softmax of those logits; a bf16 log-softmax is off by up to half a bf16 step (~0.03 near −11).
    """
    model, tok = bf16_model
    prompt, completion = tuple(tok.encode("What is 2 + 3? Answer:")), (17, 42, 99, 5, 1000, 2000)
    (got,) = token_logprobs(model, [(prompt, completion)], temperature=0.7, pad_id=tok.pad_token_id)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1]  # bf16 [6, V]
    assert logits.dtype == torch.bfloat16
    expected = (logits.double() / 0.7).log_softmax(-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("share_prompts", [False, True])
def test_logprobs_keep_fp32_precision_on_every_path(bf16_model, share_prompts):
    """Padded and shared-prompt batches: fp32 values, not bf16 values cast up (which would all round-trip)."""
    model, tok = bf16_model
    a, b = tuple(tok.encode("What is 2 + 3? Answer:")), tuple(tok.encode("Hi there"))
    seqs = [(a, (17, 42, 99, 5)), (a, (8, 9)), (b, (3, 4, 5))]
    for lp in token_logprobs(model, seqs, temperature=0.7, pad_id=tok.pad_token_id, share_prompts=share_prompts):
        assert lp.dtype == torch.float32
        assert bool((lp != lp.to(torch.bfloat16).float()).any())
