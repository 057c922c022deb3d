"""Exact identities of the residual sites (docs/semantics.md#sites): the backbone of the steering core."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlsteer import SteeringVectors, architecture_of, steer
from rlsteer.steering import Entry, SiteError, VectorFileError
from rlsteer.steering.sites import RESIDUAL_SITES
from tests.conftest import TINY_FAMILIES


def capture_layer_outputs(model):
    """Hooks recording every block's output Z_ℓ (pre-final-norm); returns (store, handles)."""
    arch = architecture_of(model)
    store: dict[int, torch.Tensor] = {}
    handles = [
        arch.layer(i).register_forward_hook(
            lambda m, a, out, i=i: store.__setitem__(i, (out[0] if isinstance(out, tuple) else out).detach())
        )
        for i in range(arch.n_layers)
    ]
    return store, handles


@pytest.mark.parametrize("site", RESIDUAL_SITES + ("full", "skip_layer"))
def test_zero_vector_is_bit_identical(tiny, batch, site):
    model, tok = tiny("llama")
    ids, mask = batch(tok)
    base = model(ids, attention_mask=mask).logits
    vectors = SteeringVectors(64, [Entry(site, 1), Entry(site, 3)])
    with steer(model, vectors):
        steered = model(ids, attention_mask=mask).logits
    assert torch.equal(base, steered)


def test_removing_the_handle_is_bit_identical(tiny, batch):
    model, tok = tiny("qwen2")
    ids, mask = batch(tok)
    base = model(ids, attention_mask=mask).logits
    handle = steer(model, {0: torch.randn(64), 2: torch.randn(64)})
    assert handle.active
    assert not torch.allclose(model(ids, attention_mask=mask).logits, base)
    handle.remove()
    assert not handle.active
    assert torch.equal(model(ids, attention_mask=mask).logits, base)
    with steer(model, SteeringVectors.from_dict({1: torch.randn(64)}, site="ln2_out")):
        pass
    assert torch.equal(model(ids, attention_mask=mask).logits, base)


def test_handle_removed_when_the_block_raises(tiny, batch):
    model, tok = tiny("llama")
    ids, mask = batch(tok)
    base = model(ids, attention_mask=mask).logits
    with pytest.raises(RuntimeError, match="boom"), steer(model, {1: torch.randn(64)}):
        raise RuntimeError("boom")
    assert torch.equal(model(ids, attention_mask=mask).logits, base)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_resid_post_equals_down_proj_bias(tiny, batch, family):
    model, tok = tiny(family)
    ids, mask = batch(tok)
    arch = architecture_of(model)
    s = torch.randn(64)
    layer = 2
    base = model(ids, attention_mask=mask).logits
    with steer(model, {layer: s}):
        steered = model(ids, attention_mask=mask).logits
    down = arch.down_proj(layer)
    assert down.bias is None
    down.bias = nn.Parameter(s.clone(), requires_grad=False)
    biased = model(ids, attention_mask=mask).logits
    assert (biased - base).abs().max() > 0.1  # the vector matters, so the identity is not vacuous
    torch.testing.assert_close(steered, biased, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
def test_vector_at_layer_shifts_only_that_layer_and_above(tiny, batch, family):
    model, tok = tiny(family)
    ids, mask = batch(tok)
    layer, s = 2, torch.randn(64)
    store, handles = capture_layer_outputs(model)
    model(ids, attention_mask=mask)
    base = dict(store)
    with steer(model, {layer: s}):
        # capture hooks registered before steering run first on the same block, so re-register after.
        for h in handles:
            h.remove()
        store, handles = capture_layer_outputs(model)
        model(ids, attention_mask=mask)
    for h in handles:
        h.remove()
    for i in range(layer):
        assert torch.equal(store[i], base[i]), f"layer {i} < {layer} changed"
    torch.testing.assert_close(store[layer] - base[layer], s.expand_as(base[layer]), atol=1e-5, rtol=0)
    assert not torch.allclose(store[layer + 1], base[layer + 1] + s, atol=1e-3)  # later blocks react to s


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_attn_out_equals_o_proj_bias(tiny, batch, family):
    model, tok = tiny(family)
    ids, mask = batch(tok)
    s = torch.randn(64)
    with steer(model, {Entry("attn_out", 1): s}):
        steered = model(ids, attention_mask=mask).logits
    o_proj = architecture_of(model).o_proj(1)
    o_proj.bias = nn.Parameter(s.clone(), requires_grad=False)
    torch.testing.assert_close(steered, model(ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)


def test_resid_pre_at_l_equals_resid_post_at_l_minus_1(tiny, batch):
    model, tok = tiny("mistral")
    ids, mask = batch(tok)
    s = torch.randn(64)
    with steer(model, {Entry("resid_pre", 2): s}):
        pre = model(ids, attention_mask=mask).logits
    with steer(model, {Entry("resid_post", 1): s}):
        post = model(ids, attention_mask=mask).logits
    assert torch.equal(pre, post)


def test_ln_sites_add_to_norm_output_and_sublayer_output(tiny, batch):
    """ln1_out ≡ attention reads LN1(X)+s and Y gets +s: emulate with explicit module edits."""
    model, tok = tiny("llama")
    ids, mask = batch(tok)
    arch = architecture_of(model)
    s = torch.randn(64)
    with steer(model, {Entry("ln1_out", 1): s, Entry("ln2_out", 2): s * 0.5}):
        steered = model(ids, attention_mask=mask).logits
    ln1, ln2 = arch.ln1(1), arch.ln2(2)
    ln1.weight.data = ln1.weight.data.clone()
    # LN output + s: RMSNorm(x)·w + s; emulate with a forward hook-free wrapper module.
    arch.layer(1).input_layernorm = _PlusBias(ln1, s)
    arch.layer(2).post_attention_layernorm = _PlusBias(ln2, s * 0.5)
    arch.o_proj(1).bias = nn.Parameter(s.clone(), requires_grad=False)
    arch.down_proj(2).bias = nn.Parameter(s * 0.5, requires_grad=False)
    torch.testing.assert_close(steered, model(ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)


class _PlusBias(nn.Module):
    def __init__(self, inner: nn.Module, bias: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.bias = inner, bias

    def forward(self, x):
        return self.inner(x) + self.bias


def test_scale_multiplies_the_vectors(tiny, batch):
    model, tok = tiny("llama")
    ids, mask = batch(tok)
    s = torch.randn(64)
    with steer(model, {1: s}, scale=2.5):
        scaled = model(ids, attention_mask=mask).logits
    with steer(model, {1: 2.5 * s}):
        explicit = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(scaled, explicit, atol=1e-6, rtol=1e-6)
    sv = SteeringVectors.from_dict({1: s}, scale=2.5)
    with steer(model, sv):
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, explicit, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_vectors_are_cast_to_the_model_dtype(tiny, batch, dtype):
    model, tok = tiny("llama")
    model = model.to(dtype)
    ids, mask = batch(tok)
    sv = SteeringVectors(64, layers=[1, 3])
    with torch.no_grad():
        sv.parameter(("resid_post", 1)).add_(torch.randn(64))
    with steer(model, sv):
        out = model(ids, attention_mask=mask).logits
    assert out.dtype == dtype
    assert sv.parameter(("resid_post", 1)).dtype == torch.float32


def test_gradients_reach_vectors_and_never_base_weights(tiny, batch):
    model, tok = tiny("qwen2")
    ids, mask = batch(tok)
    sv = SteeringVectors(64, [Entry(site, i % 4) for i, site in enumerate(RESIDUAL_SITES)])
    with steer(model, sv):
        model(ids, attention_mask=mask).logits.float().logsumexp(-1).mean().backward()
    for entry in sv.entries:
        grad = sv.parameter(entry).grad
        assert grad is not None and grad.abs().sum() > 0, entry.name
    assert all(p.grad is None for p in model.parameters())


def test_plain_tensor_dict_receives_gradients(tiny, batch):
    model, tok = tiny("llama")
    ids, mask = batch(tok)
    s = torch.zeros(64, requires_grad=True)
    with steer(model, {3: s}):
        model(ids, attention_mask=mask).logits.sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_bad_vectors_fail_clearly(tiny):
    model, _ = tiny("llama")
    with pytest.raises(VectorFileError, match="d_model=64"):
        steer(model, {1: torch.zeros(32)})
    with pytest.raises(VectorFileError, match="layer 9 is out of range.*4 layers"):
        steer(model, SteeringVectors(64, layers=[9]))
    with pytest.raises(VectorFileError, match="head 2 is out of range.*2 KV heads"):
        steer(model, SteeringVectors(64, [Entry("steer_v", 1, head=2)]))
    with pytest.raises(SiteError, match="at most one attention-branch patch"):
        steer(model, SteeringVectors(64, [Entry("steer_v", 1, head=0), Entry("steer_q", 1, head=0)]))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "failed steer leaked hooks"
