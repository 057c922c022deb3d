"""The vLLM backend's site → bias mapping, checked against the HF hooks (no vLLM needed).

The vLLM backend steers through ``down_proj`` and ``o_proj`` biases; if these biases, put on the HF model,
give the same logits as the hooks for every entry the backend accepts, the engine adds what the reference
adds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlsteer.architectures import architecture_of
from rlsteer.rollout.vllm import VLLMError, engine_biases
from rlsteer.steering import SteeringVectors, steer
from tests.conftest import TINY_FAMILIES

MAPPED = [("resid_post", 1), ("skip_layer", 0), ("attn_out", 2), ("skip_attn", 1), ("resid_pre", 3), ("full", 2)]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_engine_biases_reproduce_the_hooks(tiny, batch, family):
    model, tok = tiny(family)
    ids, mask = batch(tok)
    arch = architecture_of(model)
    vectors = SteeringVectors.from_dict({entry: torch.randn(64) for entry in MAPPED})
    base = model(ids, attention_mask=mask).logits
    with steer(model, vectors):
        hooked = model(ids, attention_mask=mask).logits
    mlp, attn = engine_biases(vectors, n_layers=arch.n_layers, d_model=arch.d_model)
    for layer in range(arch.n_layers):
        arch.down_proj(layer).bias = nn.Parameter(mlp[layer].clone(), requires_grad=False)
        arch.o_proj(layer).bias = nn.Parameter(attn[layer].clone(), requires_grad=False)
    biased = model(ids, attention_mask=mask).logits
    assert (biased - base).abs().max() > 0.1
    torch.testing.assert_close(hooked, biased, atol=1e-5, rtol=1e-5)


def test_plain_dicts_mean_resid_post_and_scale_is_applied():
    mlp, attn = engine_biases({1: torch.ones(4)}, n_layers=2, d_model=4)
    assert mlp[1].tolist() == [1.0] * 4 and mlp[0].abs().sum() == 0 and attn.abs().sum() == 0
    sv = SteeringVectors.from_dict({1: torch.ones(4)}) * 3.0
    assert engine_biases(sv, n_layers=2, d_model=4)[0][1].tolist() == [3.0] * 4


@pytest.mark.parametrize(("entry", "message"), [
    (("ln1_out", 1), "use rollout.backend=hf"),
    (("steer_v", 1, 0), "use rollout.backend=hf"),
    (("resid_pre", 0), "before block 0"),
    (("resid_post", 5), "does not fit"),
])
def test_unsupported_entries_say_what_to_do(entry, message):
    with pytest.raises(VLLMError, match=message):
        engine_biases(SteeringVectors.from_dict({entry: torch.ones(4)}), n_layers=2, d_model=4)
