"""The RLOO objective against hand-computed tables and finite differences."""

from __future__ import annotations

import pytest
import torch

from rlsteer import SteeringVectors, steer
from rlsteer.errors import RlsteerError
from rlsteer.rl import advantages, policy_loss, token_logprobs


def test_leave_one_out_table():
    rewards = torch.tensor([
        [1.0, -1.0, -1.0, -1.0],   # one success
        [1.0, 1.0, -1.0, -1.0],    # half
        [-1.0, -1.0, -1.0, -1.0],  # all equal: zero advantage
        [1.0, 1.0, 1.0, 1.0],
    ])
    expected = torch.tensor([
        [2.0, -2 / 3, -2 / 3, -2 / 3],             # 1 − (−3)/3 ; −1 − (1 − 2)/3
        [4 / 3, 4 / 3, -4 / 3, -4 / 3],            # 1 − (1 − 2)/3 = 4/3
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ])
    torch.testing.assert_close(advantages(rewards), expected)
    # LOO = N/(N−1) × (r − mean), the paper's formula scaled by 4/3
    torch.testing.assert_close(advantages(rewards), advantages(rewards, "mean") * 4 / 3)


def test_mean_and_group_std_tables():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(advantages(rewards, "mean"), torch.tensor([[0.75, -0.25, -0.25, -0.25],
                                                                          [0.5, 0.5, -0.5, -0.5]]))
    std0 = (0.75 * 0.25) ** 0.5  # population std of (1, 0, 0, 0)
    torch.testing.assert_close(advantages(rewards, "group_std"),
                               torch.tensor([[0.75 / std0, -0.25 / std0, -0.25 / std0, -0.25 / std0],
                                             [1.0, 1.0, -1.0, -1.0]]), atol=1e-5, rtol=1e-5)
    assert advantages(torch.zeros(1, 4), "group_std").abs().max() == 0


def test_advantage_errors():
    with pytest.raises(RlsteerError, match="at least 2 samples"):
        advantages(torch.ones(3, 1))
    with pytest.raises(RlsteerError, match="unknown baseline"):
        advantages(torch.ones(1, 2), "ppo")  # type: ignore[arg-type]


def test_policy_loss_table_with_truncated_sample():
    # three sequences of 2, 3 and 5 tokens (the last one truncated: it is scored like any other)
    sums = torch.tensor([-1.0, -2.0, -4.0], requires_grad=True)
    adv = torch.tensor([1.0, -0.5, -0.5])
    loss = policy_loss(sums, adv, total_tokens=10)
    assert loss.item() == pytest.approx(-(1.0 * -1.0 + -0.5 * -2.0 + -0.5 * -4.0) / 10)  # = −0.2
    loss.backward()
    torch.testing.assert_close(sums.grad, -adv / 10)
    # micro-batches add up to the whole step
    parts = policy_loss(sums[:2], adv[:2], 10) + policy_loss(sums[2:], adv[2:], 10)
    assert parts.item() == pytest.approx(loss.item())
    with pytest.raises(RlsteerError, match="no tokens"):
        policy_loss(sums, adv, 0)


def test_policy_loss_moves_cpu_advantages_to_the_log_probs_device():
    # rl_step keeps the advantages on the CPU while the log-probs live on the model's device (a GPU run with
    # `.to(dtype)` alone crashed: "Expected all tensors to be on the same device"). The meta device stands in
    # for a GPU here: mixing it with a CPU tensor raises the same way.
    sums = torch.zeros(3, device="meta", dtype=torch.bfloat16)
    loss = policy_loss(sums, torch.tensor([1.0, -0.5, -0.5]), total_tokens=10)
    assert loss.device.type == "meta" and loss.dtype == torch.bfloat16


def test_token_logprobs_match_a_single_sequence_forward(tiny):
    model, tok = tiny("llama")
    seqs = [(tuple(tok.encode("1 + 1 =")), (17, 42, 99)), (tuple(tok.encode("Hello there, friend")), (5,))]
    got = token_logprobs(model, seqs, temperature=0.5, pad_id=tok.pad_token_id)
    for (prompt, completion), lp in zip(seqs, got, strict=True):
        logits = model(torch.tensor([prompt + completion])).logits[0].float() / 0.5
        expected = logits.log_softmax(-1)[len(prompt) - 1:-1].gather(-1, torch.tensor(completion)[:, None])[:, 0]
        torch.testing.assert_close(lp, expected, atol=1e-5, rtol=1e-5)


def test_loss_gradient_matches_finite_differences(tiny):
    model, tok = tiny("qwen2")
    model = model.double()
    seqs = [(tuple(tok.encode("2 + 3 =")), (20, 30, 40)), (tuple(tok.encode("x")), (7, 8))]
    adv = torch.tensor([1.0, -0.5], dtype=torch.float64)
    sv = SteeringVectors(64, layers=[1, 3])
    with torch.no_grad():
        for e in sv.entries:
            sv.parameter(e).normal_(std=0.5)

    def loss_fn() -> torch.Tensor:
        with steer(model, sv):
            lps = token_logprobs(model, seqs, pad_id=tok.pad_token_id)
        return policy_loss(torch.stack([lp.sum() for lp in lps]).double(), adv, total_tokens=5)

    loss_fn().backward()
    param = sv.parameter(("resid_post", 1))
    analytic = param.grad.clone()
    eps = 1e-2  # RMSNorm computes in fp32 even in a float64 model, so a tiny step would drown in rounding
    for idx in (0, 17, 63):
        with torch.no_grad():
            param[idx] += eps
            up = loss_fn().item()
            param[idx] -= 2 * eps
            down = loss_fn().item()
            param[idx] += eps
        assert (up - down) / (2 * eps) == pytest.approx(analytic[idx].item(), rel=2e-3, abs=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "gemma", "olmo", "phi3"])
def test_shared_prompts_give_the_unshared_logprobs_and_gradients(tiny, family):
    """A group's samples on one prompt's KV cache = each sample computed in full, values and gradients."""
    model, tok = tiny(family)
    a, b = tuple(tok.encode("What is 2 + 3? Answer:")), tuple(tok.encode("Hi"))
    seqs = [(a, (17, 42, 99, 5)), (a, (8,)), (a, ()), (b, (3, 4)), (a, (11, 12)), (b, (9,))]
    sv = SteeringVectors(64, entries=[("resid_post", 0), ("attn_out", 2), ("resid_post", 3)])
    with torch.no_grad():
        for e in sv.entries:
            sv.parameter(e).normal_(std=0.5, generator=torch.Generator().manual_seed(e.layer))
    results = []
    for share in (False, True):
        sv.zero_grad()
        with steer(model, sv):
            lps = token_logprobs(model, seqs, temperature=0.7, pad_id=tok.pad_token_id, share_prompts=share)
        policy_loss(torch.stack([lp.sum() for lp in lps]), torch.tensor([1.0, -1, 0.5, 2, -0.5, 1]), 10).backward()
        results.append((lps, {e: sv.parameter(e).grad.clone() for e in sv.entries}))
    (flat, flat_grad), (shared, shared_grad) = results
    assert [lp.shape for lp in shared] == [lp.shape for lp in flat] == [torch.Size([len(c)]) for _, c in seqs]
    for x, y in zip(flat, shared, strict=True):
        torch.testing.assert_close(y, x, atol=2e-5, rtol=1e-5)
    for e in sv.entries:
        torch.testing.assert_close(shared_grad[e], flat_grad[e], atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in shared_grad.values())


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    from rlsteer.rl import gradient_checkpointing

    model, tok = tiny("qwen3")
    seqs = [(tuple(tok.encode("2 + 3 =")), (20, 30, 40)), (tuple(tok.encode("x")), (7, 8))]
    sv = SteeringVectors(64, layers=[0, 2])
    with torch.no_grad():
        sv.parameter(("resid_post", 0)).normal_(std=0.5, generator=torch.Generator().manual_seed(0))
    grads = []
    for enabled in (False, True):
        sv.zero_grad()
        with steer(model, sv), gradient_checkpointing(model, enabled):
            assert model.training == enabled
            lps = token_logprobs(model, seqs, pad_id=tok.pad_token_id, share_prompts=False)
            policy_loss(torch.stack([lp.sum() for lp in lps]), torch.tensor([1.0, -1.0]), 5).backward()
        grads.append([p.grad.clone() for p in sv.parameters()])
    assert not model.training and not model.is_gradient_checkpointing
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    model.config.attention_dropout = 0.1
    with pytest.raises(RlsteerError, match="dropout"), gradient_checkpointing(model):
        pass
