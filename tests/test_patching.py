"""Circuit patching (docs/semantics.md#patching): identities between variants, head locality, Appendix I."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rlsteer import SteeringVectors, architecture_of, steer
from rlsteer.steering import Entry, SiteError, patch
from rlsteer.steering.handles import hidden_input

LAYER = 2


def logits(model, ids, mask):
    return model(ids, attention_mask=mask).logits


def with_down_proj_bias(model: nn.Module, layer: int, s: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose block ``layer`` carries ``s`` as its MLP ``down_proj`` bias: the authors'
    parameterisation of a steering vector, computed by the model's own forward with no hooks at all."""
    twin = copy.deepcopy(model)
    down = architecture_of(twin).mlp(layer).down_proj
    assert down.bias is None
    down.bias = nn.Parameter(s.clone(), requires_grad=False)
    return twin


# the families whose block output is X + attn + MLP(…) with down_proj last (no norm after the MLP)
BIAS_FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma", "olmo", "phi3"]


@pytest.mark.parametrize("family", BIAS_FAMILIES)
def test_resid_post_and_skip_layer_equal_a_down_proj_bias(tiny, batch, family):
    """resid_post ℓ and the skip_layer patch of block ℓ both add s after block ℓ's MLP: the down_proj bias of
    block ℓ. Kills a wrong hook mapping in install_residual (e.g. either on block ℓ's input, or on its attention)."""
    model, tok = tiny(family)
    ids, mask = batch(tok)
    s = torch.randn(64)
    expected = logits(with_down_proj_bias(model, LAYER, s), ids, mask)
    assert not torch.allclose(expected, logits(model, ids, mask), atol=1e-3)
    with steer(model, {Entry("resid_post", LAYER): s}):
        torch.testing.assert_close(logits(model, ids, mask), expected, atol=1e-5, rtol=1e-5)
    with patch(model, s, LAYER, "skip_layer"):
        torch.testing.assert_close(logits(model, ids, mask), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", BIAS_FAMILIES)
def test_resid_pre_and_full_equal_the_previous_blocks_down_proj_bias(tiny, batch, family):
    """resid_pre ℓ and the full patch of block ℓ (Q, K, V from LN1(X + s), residual X + s) are s added to the
    input of block ℓ, i.e. the down_proj bias of block ℓ − 1. Kills a wrong hook mapping (e.g. on block ℓ's
    output, or s seen by the attention but not carried in the residual)."""
    model, tok = tiny(family)
    ids, mask = batch(tok)
    s = torch.randn(64)
    expected = logits(with_down_proj_bias(model, LAYER - 1, s), ids, mask)
    with steer(model, {Entry("resid_pre", LAYER): s}):
        torch.testing.assert_close(logits(model, ids, mask), expected, atol=1e-5, rtol=1e-5)
    with patch(model, s, LAYER, "full"):
        torch.testing.assert_close(logits(model, ids, mask), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_resid_pre_and_full_of_block_0_add_to_the_embeddings(tiny, batch, family):
    """At block 0 the input is the token embedding: the model fed embeddings + s gives the same logits."""
    model, tok = tiny(family)
    ids, mask = batch(tok)
    s = torch.randn(64)
    with torch.no_grad():
        expected = model(inputs_embeds=model.get_input_embeddings()(ids) + s, attention_mask=mask).logits
    with steer(model, {Entry("resid_pre", 0): s}):
        torch.testing.assert_close(logits(model, ids, mask), expected, atol=1e-5, rtol=1e-5)
    with patch(model, s, 0, "full"):
        torch.testing.assert_close(logits(model, ids, mask), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma", "phi3"])
def test_steer_head_over_all_heads_equals_full(tiny, batch, family):
    model, tok = tiny(family)
    ids, mask = batch(tok)
    arch = architecture_of(model)
    s = torch.randn(64)
    with patch(model, s, LAYER, "full"):
        full = logits(model, ids, mask)
    with patch(model, s, LAYER, "steer_head", heads=range(arch.n_heads)):
        torch.testing.assert_close(logits(model, ids, mask), full, atol=1e-5, rtol=1e-5)
    with patch(model, s, LAYER, "steer_head", heads=[0]):  # one head alone is something else
        assert not torch.allclose(logits(model, ids, mask), full, atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma", "phi3"])
def test_skip_head_over_all_heads_equals_skip_attn(tiny, batch, family):
    model, tok = tiny(family)
    ids, mask = batch(tok)
    arch = architecture_of(model)
    s = torch.randn(64)
    with patch(model, s, LAYER, "skip_attn"):
        skip_attn = logits(model, ids, mask)
    with patch(model, s, LAYER, "skip_head", heads=range(arch.n_heads)):
        torch.testing.assert_close(logits(model, ids, mask), skip_attn, atol=1e-5, rtol=1e-5)
    with patch(model, s, LAYER, "full"):
        assert not torch.allclose(logits(model, ids, mask), skip_attn, atol=1e-3)


@pytest.mark.parametrize("stream", ["q", "k", "v"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_steering_every_head_of_one_stream_feeds_that_projection_ln1_of_x_plus_s(tiny, batch, family, stream):
    """steer_x over all heads = `full` with the two other projections fed the vanilla LN1(X)."""
    model, tok = tiny(family)
    ids, mask = batch(tok)
    arch = architecture_of(model)
    attn, s = arch.attn(LAYER), torch.randn(64)
    seen: dict[str, torch.Tensor] = {}
    handles = [arch.layer(LAYER).register_forward_pre_hook(
        lambda m, a, k: seen.__setitem__("x", hidden_input(a, k)), with_kwargs=True)]  # runs before the patch
    for other in {"q", "k", "v"} - {stream}:
        handles.append(getattr(attn, f"{other}_proj").register_forward_pre_hook(
            lambda m, a: (arch.ln1(LAYER).forward(seen["x"]),)))
    with patch(model, s, LAYER, "full"):
        expected = logits(model, ids, mask)
    for h in handles:
        h.remove()
    n = arch.n_heads if stream == "q" else arch.n_kv_heads
    with patch(model, s, LAYER, f"steer_{stream}", heads=range(n)):
        patched = logits(model, ids, mask)
    torch.testing.assert_close(patched, expected, atol=1e-5, rtol=1e-5)
    with patch(model, s, LAYER, "skip_attn"):
        assert not torch.allclose(patched, logits(model, ids, mask), atol=1e-3)


def test_per_head_patches_touch_only_their_head(tiny, batch):
    model, tok = tiny("qwen2")  # 4 query heads, 2 KV heads, head_dim 32, biases on q/k/v
    ids, mask = batch(tok)
    arch = architecture_of(model)
    seen: dict[str, torch.Tensor] = {}

    def grab(name):
        return lambda m, a, out: seen.__setitem__(name, out.detach().clone())

    def grab_input(name):
        return lambda m, a: seen.__setitem__(name, a[0].detach().clone())

    attn = arch.attn(LAYER)
    hs = [attn.q_proj.register_forward_hook(grab("q")), attn.k_proj.register_forward_hook(grab("k")),
          attn.v_proj.register_forward_hook(grab("v")), attn.o_proj.register_forward_pre_hook(grab_input("o"))]
    logits(model, ids, mask)
    base = dict(seen)
    s = torch.randn(64)
    hd = arch.head_dim
    cases = [("steer_q", 3, "q"), ("steer_k", 1, "k"), ("steer_v", 0, "v"), ("steer_head", 2, "o"),
             ("skip_head", 1, "o")]
    for variant, head, stream in cases:
        with patch(model, s, LAYER, variant, heads=head):
            # hooks registered after the patch see its result; re-register the grabbers
            for h in hs:
                h.remove()
            hs = [attn.q_proj.register_forward_hook(grab("q")), attn.k_proj.register_forward_hook(grab("k")),
                  attn.v_proj.register_forward_hook(grab("v")),
                  attn.o_proj.register_forward_pre_hook(grab_input("o"))]
            logits(model, ids, mask)
        changed = (seen[stream] - base[stream]).abs().amax(dim=(0, 1)).reshape(-1, hd).amax(-1) > 0
        if variant == "skip_head":  # every head except `head` is steered
            expected = torch.ones_like(changed)
            expected[head] = False
        else:
            expected = torch.zeros_like(changed)
            expected[head] = True
        assert changed.tolist() == expected.tolist(), variant
        for other in {"q", "k", "v"} - {stream}:
            if variant in ("steer_head", "skip_head"):
                continue
            assert torch.equal(seen[other], base[other]), f"{variant} changed {other}"
    for h in hs:
        h.remove()


def test_appendix_i_value_steering_adds_s_wv_wo(tiny, batch):
    """With LN1 bypassed, steering V of all heads adds exactly s·W_V·W_O to the attention output."""
    model, tok = tiny("llama")  # GQA: 4 query heads share 2 KV heads
    ids, mask = batch(tok)
    arch = architecture_of(model)
    arch.layer(LAYER).input_layernorm = nn.Identity()
    attn = arch.attn(LAYER)
    out: dict[str, torch.Tensor] = {}
    h = attn.register_forward_hook(lambda m, a, o: out.__setitem__("a", o[0].detach().clone()))
    logits(model, ids, mask)
    vanilla = out["a"]  # [batch, pos, d]
    s = torch.randn(64)
    h.remove()
    with patch(model, s, LAYER, "steer_v", heads=range(arch.n_kv_heads)):
        h = attn.register_forward_hook(lambda m, a, o: out.__setitem__("a", o[0].detach().clone()))
        logits(model, ids, mask)
        h.remove()
    sv = attn.v_proj.weight @ s  # [kv_heads * head_dim]; the V bias cancels (in both runs)
    per_query_head = sv.view(arch.n_kv_heads, 1, arch.head_dim).expand(-1, arch.group_size, -1).reshape(-1)
    expected_shift = attn.o_proj.weight @ per_query_head  # [d]
    real = mask.bool()  # left-padding rows attend to nothing, so their softmax does not sum to 1
    shift = (out["a"] - vanilla)[real]  # [real positions, d]
    torch.testing.assert_close(shift, expected_shift.expand_as(shift), atol=1e-5, rtol=1e-4)


def test_patch_gradients_reach_the_vector_only(tiny, batch):
    model, tok = tiny("llama")
    ids, mask = batch(tok)
    for site, head in [("skip_attn", None), ("steer_q", 1), ("steer_k", 0), ("steer_v", 1), ("steer_head", 3),
                       ("skip_head", 0)]:
        sv = SteeringVectors(64, [Entry(site, LAYER, head)])
        with torch.no_grad():
            sv.parameter(sv.entries[0]).normal_()
        with steer(model, sv):
            logits(model, ids, mask).logsumexp(-1).mean().backward()
        grad = sv.parameter(sv.entries[0]).grad
        assert grad is not None and grad.abs().sum() > 0, site
    assert all(p.grad is None for p in model.parameters())


def test_bad_patches_fail_clearly(tiny):
    model, _ = tiny("llama")
    s = torch.randn(64)
    with pytest.raises(SiteError, match="unknown patch variant"):
        patch(model, s, 1, "steer_x")
    with pytest.raises(SiteError, match="head 4 is out of range, the model has 4 query heads"):
        patch(model, s, 1, "steer_head", heads=4)
    with pytest.raises(SiteError, match="2 KV heads"):
        patch(model, s, 1, "steer_k", heads=[2])
    with pytest.raises(SiteError, match="needs at least one head"):
        patch(model, s, 1, "steer_q")
    with pytest.raises(SiteError, match="takes no heads"):
        patch(model, s, 1, "full", heads=0)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


PATCHES = [("full", None), ("skip_attn", None), ("skip_layer", None), ("steer_q", 1), ("steer_k", 0), ("steer_v", 1),
           ("steer_head", 0), ("skip_head", 1)]


@pytest.mark.parametrize("variant,head", PATCHES)
def test_patches_with_several_samples_per_prompt_match_the_unshared_run(tiny, variant, head):
    """The paper protocol draws 32 samples per prompt: the HF backend then prefills each prompt once and copies
    its KV cache to the samples' rows (and the loss pass does the same). Kills a branch patch whose own KV
    cache does not follow that reorder (steer_head / skip_head crashed, or would mix rows)."""
    from rlsteer.rl import token_logprobs
    from rlsteer.rollout import HFBackend, Request, SamplingParams

    model, tok = tiny("qwen2")  # 4 query heads over 2 KV heads
    patch = {Entry(variant, 2, head): torch.randn(64, generator=torch.Generator().manual_seed(3)) * 4}
    prompts = [tuple(tok.encode("The sum of 12 and 30 is")), tuple(tok.encode("Hi"))]
    group = [Request(p, (tok.eos_token_id,), seed=s) for p in prompts for s in range(3)]
    params = SamplingParams(temperature=1.0, max_new_tokens=5, logprobs=True)
    shared = HFBackend(model, tok, batch_size=8, progress=False).generate(group, patch, params)
    unshared = HFBackend(model, tok, batch_size=8, progress=False, share_prompts=False).generate(group, patch, params)
    assert [r.token_ids for r in shared] == [r.token_ids for r in unshared]
    for x, y in zip(shared, unshared, strict=True):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=1e-4)
    seqs = [(r.request.prompt_ids, r.token_ids) for r in shared]
    with torch.no_grad(), steer(model, patch):
        flat = token_logprobs(model, seqs, pad_id=tok.pad_token_id, share_prompts=False)
        reused = token_logprobs(model, seqs, pad_id=tok.pad_token_id, share_prompts=True)
    for x, y in zip(flat, reused, strict=True):
        torch.testing.assert_close(y, x, atol=2e-5, rtol=1e-5)
