"""The padding-free loss pass: packed log-probs and gradients = padded ones for every family; token budgets."""

from __future__ import annotations

import random

import pytest
import torch

from rlsteer import SteeringVectors, steer
from rlsteer.errors import RlsteerError
from rlsteer.packing import micro_batches, pack, packed_attention, row_tokens
from rlsteer.rl import gradient_checkpointing, policy_loss, token_logprobs
from tests.conftest import TINY_FAMILIES

ADV = torch.tensor([1.0, -1, 0.5, 2, -0.5, 1, 0.25])


def sequences(tok):
    """Two prompts of different length, completions of 0…5 tokens, interleaved groups."""
    a, b = tuple(tok.encode("What is 2 + 3? Answer:")), tuple(tok.encode("Hi"))
    return [(a, (17, 42, 99, 5)), (a, (8,)), (a, ()), (b, (3, 4)), (a, (11, 12)), (b, (9,)), (b, (1, 2, 3, 4, 5))]


def random_vectors(entries):
    sv = SteeringVectors(64, entries=entries)
    with torch.no_grad():
        for e in sv.entries:
            sv.parameter(e).normal_(std=0.5, generator=torch.Generator().manual_seed(e.layer))
    return sv


def logprobs_and_grads(model, tok, sv, seqs, **kwargs):
    sv.zero_grad()
    with steer(model, sv):
        lps = token_logprobs(model, seqs, temperature=0.7, pad_id=tok.pad_token_id, **kwargs)
    policy_loss(torch.stack([lp.sum() for lp in lps]), ADV[:len(seqs)], 10).backward()
    return lps, {e: sv.parameter(e).grad.clone() for e in sv.entries}


def assert_same(result, reference):
    (lps, grads), (ref_lps, ref_grads) = result, reference
    assert [lp.shape for lp in lps] == [lp.shape for lp in ref_lps]
    for x, y in zip(lps, ref_lps, strict=True):
        torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-5)
    for e, g in ref_grads.items():
        torch.testing.assert_close(grads[e], g, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in ref_grads.values())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_packed_logprobs_and_gradients_equal_the_padded_ones(tiny, family):
    """One packed row, with and without shared prompts = each sequence padded (kills attention that crosses
    sequences, positions that do not restart, a shared prompt not seen by its completions, misaligned targets)."""
    model, tok = tiny(family)
    seqs = sequences(tok)
    sv = random_vectors([("resid_post", 0), ("attn_out", 2), ("resid_post", 3)])
    reference = logprobs_and_grads(model, tok, sv, seqs, share_prompts=False, pack=False)
    assert [lp.shape[0] for lp in reference[0]] == [len(c) for _, c in seqs]
    for share in (False, True):
        assert_same(logprobs_and_grads(model, tok, sv, seqs, share_prompts=share, pack=True), reference)


def test_packed_head_patches_equal_the_padded_ones(tiny):
    """steer_head runs a second attention branch inside the block: it must see the packed segments too."""
    model, tok = tiny("qwen3")
    seqs = sequences(tok)
    sv = random_vectors([("steer_head", 1, 0), ("resid_post", 2)])
    reference = logprobs_and_grads(model, tok, sv, seqs, share_prompts=False, pack=False)
    assert_same(logprobs_and_grads(model, tok, sv, seqs, share_prompts=True, pack=True), reference)


def test_packed_attention_keeps_the_sliding_window(tiny):
    """Mistral with a window of 3 positions, shorter than the sequences (kills a packed attention that
    ignores the window: the windowed log-probs differ from the full ones)."""
    model, tok = tiny("mistral")
    seqs = sequences(tok)
    sv = random_vectors([("resid_post", 1)])
    full = logprobs_and_grads(model, tok, sv, seqs, share_prompts=False, pack=False)
    model.config.sliding_window = 3
    reference = logprobs_and_grads(model, tok, sv, seqs, share_prompts=False, pack=False)
    assert not torch.allclose(reference[0][0], full[0][0], atol=1e-4)
    for share in (False, True):
        assert_same(logprobs_and_grads(model, tok, sv, seqs, share_prompts=share, pack=True), reference)


def test_packed_attention_with_gradient_checkpointing(tiny):
    """Checkpointing recomputes attention in the backward pass: packed, with shared prompts, equal gradients;
    and a packed forward whose backward would run outside packed_attention() is refused."""
    model, tok = tiny("llama")
    seqs = sequences(tok)
    sv = random_vectors([("resid_post", 0), ("resid_post", 2)])
    reference = logprobs_and_grads(model, tok, sv, seqs, share_prompts=False, pack=False)
    with gradient_checkpointing(model), packed_attention(model):
        result = logprobs_and_grads(model, tok, sv, seqs, share_prompts=True, pack=True)
    assert_same(result, reference)
    with gradient_checkpointing(model), pytest.raises(RlsteerError, match="packed_attention"):
        token_logprobs(model, seqs, pad_id=tok.pad_token_id, pack=True)


def test_pack_layout():
    seqs = [((1, 2, 3), (4, 5, 6)), ((1, 2, 3), (7,)), ((8,), ()), ((9, 9), (1, 2))]
    shared = pack(seqs, share_prompts=True)
    assert shared.input_ids.tolist() == [[1, 2, 3, 4, 5, 9, 9, 1]]
    assert shared.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    assert [(s.start, s.end, s.context) for s in shared.segments] == [(0, 3, None), (3, 5, (0, 3)), (5, 7, None),
                                                                      (7, 8, (5, 7))]
    # the prompt's last position (2) predicts 4 and 7; 3 predicts 5, 4 predicts 6
    assert [[shared.keep[i].item() for i in t] for t in shared.targets] == [[2, 3, 4], [2], [], [6, 7]]
    flat = pack(seqs, share_prompts=False)
    assert flat.input_ids.tolist() == [[1, 2, 3, 4, 5, 1, 2, 3, 9, 9, 1]]
    assert flat.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2]]
    assert [[flat.keep[i].item() for i in t] for t in flat.targets] == [[2, 3, 4], [7], [], [9, 10]]
    for batch, share in ((shared, True), (flat, False)):
        assert batch.tokens == row_tokens(seqs, share_prompts=share)


def test_micro_batches_respect_the_token_budget_and_keep_order():
    rng = random.Random(0)
    prompts = [tuple(rng.randrange(100) for _ in range(rng.randint(1, 30))) for _ in range(6)]
    seqs = [(p, tuple(range(rng.randint(0, 50)))) for p in prompts for _ in range(4)]
    for share in (True, False):
        for budget in (1, 20, 64, 200, 10_000):
            for cap in (None, 3):
                batches = micro_batches(seqs, max_tokens=budget, max_sequences=cap, share_prompts=share)
                assert [i for b in batches for i in b] == list(range(len(seqs)))
                for b in batches:
                    tokens = row_tokens([seqs[i] for i in b], share_prompts=share)
                    alone = row_tokens([seqs[b[0]]], share_prompts=share)
                    # over budget only when the first sequence alone is (empty completions add nothing)
                    assert tokens <= budget or tokens == alone > budget
                    assert cap is None or len(b) <= cap
                # greedy: the next sequence would not have fitted
                for b, nxt in zip(batches, batches[1:], strict=False):
                    grown = row_tokens([seqs[i] for i in [*b, nxt[0]]], share_prompts=share)
                    assert grown > budget or (cap is not None and len(b) == cap)
    with pytest.raises(RlsteerError, match="micro_batch_tokens"):
        micro_batches(seqs, max_tokens=0)


def test_a_model_whose_attention_bypasses_the_packed_function_is_refused(tiny, monkeypatch):
    """Attention that ignores the packed implementation would mix sequences silently: refused instead."""
    from contextlib import nullcontext

    import rlsteer.packing as packing

    model, tok = tiny("llama")
    monkeypatch.setattr(packing, "packed_attention", lambda model: nullcontext())  # plain sdpa over the row
    with pytest.raises(RlsteerError, match="set rl.pack=false"):
        token_logprobs(model, sequences(tok), pad_id=tok.pad_token_id, pack=True)
