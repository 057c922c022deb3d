"""Cached generation under every site and patch equals uncached recomputation, token by token."""

from __future__ import annotations

import pytest
import torch

from rlsteer import SteeringVectors, steer
from rlsteer.steering import Entry
from rlsteer.steering.sites import RESIDUAL_SITES

CASES = [(site, None) for site in RESIDUAL_SITES] + [
    ("full", None), ("skip_attn", None), ("skip_layer", None), ("steer_q", 1), ("steer_k", 1), ("steer_v", 0),
    ("steer_head", 2), ("skip_head", 1),
]


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
@pytest.mark.parametrize(("site", "head"), CASES, ids=[s if h is None else f"{s}{h}" for s, h in CASES])
def test_cached_generation_equals_uncached(tiny, batch, family, site, head):
    model, tok = tiny(family)
    ids, mask = batch(tok)
    sv = SteeringVectors(64, [Entry(site, 2, head)], trainable=False)
    with torch.no_grad():
        sv.parameter(sv.entries[0]).normal_(std=3.0)
    new = 6
    with steer(model, sv):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        seq = out.sequences  # [batch, prompt + new]
        full_mask = torch.cat([mask, torch.ones(mask.shape[0], new, dtype=mask.dtype)], dim=1)
        recomputed = model(seq, attention_mask=full_mask, position_ids=positions(full_mask), use_cache=False).logits
    prompt_len = ids.shape[1]
    assert len(out.logits) == new
    for t, step in enumerate(out.logits):  # step: [batch, vocab], predicted with the KV cache
        torch.testing.assert_close(step, recomputed[:, prompt_len - 1 + t], atol=2e-4, rtol=1e-4,
                                   msg=lambda m, t=t: f"step {t}: {m}")
    base = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                          output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    assert not torch.allclose(base.logits[-1], out.logits[-1], atol=1e-3), "the vector had no effect"
