"""The HF rollout backend against transformers' own generate and teacher-forced recomputation."""

from __future__ import annotations

import random

import pytest
import torch

from rlsteer import steer
from rlsteer.rollout import HFBackend, Request, SamplingError, SamplingParams
from rlsteer.rollout.sampling import filter_logits

PROMPTS = ("The sum of 12 and 30 is", "Hi", "Question: what is 7 times 6? Answer:", "x")


def requests(tok, seeds=(0, 1, 2, 3), stop=None):
    stop_ids = (tok.eos_token_id,) if stop is None else stop
    return [Request(tuple(tok.encode(p)), stop_ids, seed=s) for p, s in zip(PROMPTS, seeds, strict=True)]


def test_greedy_matches_transformers_generate(tiny):
    model, tok = tiny("qwen2")
    reqs = requests(tok)
    got = HFBackend(model, tok, progress=False).generate(reqs, None, SamplingParams(temperature=0, max_new_tokens=7))
    for req, rollout in zip(reqs, got, strict=True):
        ref = model.generate(torch.tensor([req.prompt_ids]), max_new_tokens=7, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, req.prompt_len:]
        assert list(rollout.token_ids) == ref.tolist()[: rollout.num_tokens]


def test_logprobs_match_teacher_forcing(tiny):
    model, tok = tiny("llama")
    reqs = requests(tok)
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=6, logprobs=True)
    for rollout in HFBackend(model, tok, progress=False).generate(reqs, None, params):
        full = torch.tensor([rollout.request.prompt_ids + rollout.token_ids])
        logits = model(full).logits[0, rollout.request.prompt_len - 1:-1].float() / 0.7  # [new, vocab]
        expected = logits.log_softmax(-1).gather(-1, torch.tensor(rollout.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(rollout.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_per_request_seeds_make_results_independent_of_batching(tiny):
    model, tok = tiny("llama")
    reqs = requests(tok, seeds=(11, 12, 13, 14))
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    whole = HFBackend(model, tok, batch_size=8, progress=False).generate(reqs, None, params)
    single = HFBackend(model, tok, batch_size=1, progress=False).generate(reqs, None, params)
    shuffled_order = list(range(4))
    random.Random(0).shuffle(shuffled_order)
    shuffled = HFBackend(model, tok, batch_size=3, progress=False).generate(
        [reqs[i] for i in shuffled_order], None, params)
    assert [r.token_ids for r in whole] == [r.token_ids for r in single]
    assert [shuffled[shuffled_order.index(i)].token_ids for i in range(4)] == [r.token_ids for r in whole]
    reseeded = HFBackend(model, tok, progress=False).generate(requests(tok, seeds=(21, 22, 23, 24)), None, params)
    assert [r.token_ids for r in reseeded] != [r.token_ids for r in whole]


def test_stop_tokens_and_length_limits(tiny):
    model, tok = tiny("llama")
    backend = HFBackend(model, tok, progress=False)
    free = backend.generate(requests(tok), None, SamplingParams(temperature=0, max_new_tokens=6))
    stop_token = free[0].token_ids[2]
    reqs = requests(tok, stop=(stop_token,))
    stopped = backend.generate(reqs, None, SamplingParams(temperature=0, max_new_tokens=6))
    first = stopped[0]
    assert first.finish_reason == "stop"
    assert first.token_ids == free[0].token_ids[: first.token_ids.index(stop_token) + 1]
    assert all(r.finish_reason == "length" and r.num_tokens == 6 for r in stopped if stop_token not in r.token_ids)
    capped = backend.generate(reqs, None, SamplingParams(temperature=0, max_new_tokens=50, max_total_tokens=12))
    for r in capped:
        assert r.request.prompt_len + r.num_tokens <= 12
        assert r.finish_reason == "stop" or r.request.prompt_len + r.num_tokens == 12


def test_steering_is_active_during_generation_and_removed_after(tiny):
    model, tok = tiny("qwen3")
    backend = HFBackend(model, tok, progress=False)
    reqs = requests(tok)
    params = SamplingParams(temperature=0, max_new_tokens=6)
    base = backend.generate(reqs, None, params)
    s = {3: torch.randn(64) * 20}
    steered = backend.generate(reqs, s, params)
    with steer(model, s):
        manual = backend.generate(reqs, None, params)
    assert [r.token_ids for r in steered] == [r.token_ids for r in manual]
    assert [r.token_ids for r in steered] != [r.token_ids for r in base]
    assert [r.token_ids for r in backend.generate(reqs, None, params)] == [r.token_ids for r in base]


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda out: torch.isfinite(out)[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2, top_p=1.0)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_k=-1, top_p=0.8)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_k=-1, top_p=0.81)) == [True, True, True, False]
    assert kept(filter_logits(logits, top_k=-1, top_p=0.1)) == [True, False, False, False]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert kept(filter_logits(shuffled, top_k=-1, top_p=0.8)) == [False, True, False, True]


def test_sampling_draws_from_the_filtered_distribution():
    from rlsteer.rollout.sampling import next_tokens

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.clamp(min=1e-30).log().expand(4000, -1)
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    tokens, logprobs = next_tokens(logits, SamplingParams(temperature=1.0), gens)
    freq = torch.bincount(tokens, minlength=5).float() / 4000
    assert (freq - probs).abs().max() < 0.03 and freq[4] == 0
    torch.testing.assert_close(logprobs, probs.clamp(min=1e-30).log()[tokens])
    top2, _ = next_tokens(logits, SamplingParams(temperature=1.0, top_k=2), gens)
    assert set(top2.tolist()) == {0, 1}
    again, _ = next_tokens(logits, SamplingParams(temperature=1.0), [torch.Generator().manual_seed(i)
                                                                    for i in range(4000)])
    assert torch.equal(tokens, again)


def test_bad_sampling_params():
    with pytest.raises(SamplingError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(SamplingError, match="temperature"):
        SamplingParams(temperature=-1)
    assert SamplingParams(max_new_tokens=10, max_total_tokens=15).budget(12) == 3


def test_a_group_sharing_one_prompt_samples_as_if_each_had_its_own(tiny):
    """Prefill once per distinct prompt: each row still samples from its own prompt's distribution and seed."""
    model, tok = tiny("qwen3")
    params = SamplingParams(temperature=1.0, max_new_tokens=6, logprobs=True)
    prompt = tuple(tok.encode(PROMPTS[2]))
    group = [Request(prompt, (tok.eos_token_id,), seed=s) for s in range(5)] + requests(tok)
    together = HFBackend(model, tok, batch_size=16, progress=False).generate(group, None, params)
    alone = HFBackend(model, tok, batch_size=1, progress=False).generate(group, None, params)
    unshared = HFBackend(model, tok, batch_size=16, progress=False, share_prompts=False).generate(group, None, params)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone] == [r.token_ids for r in unshared]
    for x, y in zip(together, alone, strict=True):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=1e-4)
    assert len({r.token_ids for r in together[:5]}) > 1  # the group's rows are distinct samples
