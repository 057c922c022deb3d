"""rlsteer export / import: bias checkpoints, [L, d] .npy, llama.cpp GGUF control vectors, lm-eval .pt files."""

from __future__ import annotations

import json
import logging

import gguf
import numpy as np
import pytest
import torch
from torch import nn

from rlsteer import SteeringVectors, architecture_of, load_model, steer
from rlsteer.cli import main
from rlsteer.interop import (
    InteropError,
    drop_unsupported,
    export_caveats,
    export_vectors,
    import_vectors,
    llama_cpp_cvec,
)
from rlsteer.models import model_folder
from rlsteer.steering import Entry, VectorFileError

TINY = "tiny-random-qwen3"


def vector_set(entries, *, model=TINY, d=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = {Entry.parse(e) if isinstance(e, str) else e: torch.randn(d, generator=gen) for e in entries}
    return SteeringVectors.from_dict(values, metadata={"model": model, "architecture": "qwen3", "n_layers": "4",
                                                       "template": "qwen-math", "model_revision": ""})


def same_vectors(a, b):
    assert [e.name for e in a.entries] == [e.name for e in b.entries]
    for e in a.entries:
        assert torch.equal(a.vector(e), b.vector(e)), e.name


def logits(model, tok):
    ids = tok(["The sum of 12 and 30 is", "Hi there, how"], return_tensors="pt", padding=True)
    return model(ids.input_ids, attention_mask=ids.attention_mask).logits


def nothing_left(folder):
    return [p.name for p in folder.iterdir()] == []


# ------------------------------------------------------------------------------------------ bias checkpoint


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("family", ["qwen3", "llama"])  # untied and tied embeddings
def test_bias_checkpoint_loads_steered(tmp_path, family):
    spec = f"tiny-random-{family}"
    sv = vector_set(["resid_post.1", "resid_post.3", "resid_pre.2"], model=spec)  # resid_pre.2 → block 1
    out = export_vectors(sv, tmp_path / "ckpt", "bias")
    config = json.loads((out / "config.json").read_text())
    assert config["rlsteer_steering"]["site"] == "down_proj_bias"
    assert config["rlsteer_steering"]["base_model"] == spec and config["rlsteer_steering"]["layers"] == [1, 3]
    base, tok = load_model(spec)
    hf_logger, seen = logging.getLogger("transformers.modeling_utils"), Records()
    hf_logger.addHandler(seen)
    try:
        steered, _ = load_model(out)
    finally:
        hf_logger.removeHandler(seen)
    assert not [m for m in seen.messages if "down_proj" in m]  # no report calling the biases unused
    assert architecture_of(steered).down_proj(0).bias is not None
    with steer(base, sv):
        want = logits(base, tok)
    got = logits(steered, tok)
    assert (got - logits(base, tok)).abs().max() > 0.1  # the biases matter
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_bias_import_round_trip_is_bit_exact(tmp_path):
    sv = vector_set(["resid_post.0", "resid_post.2"])
    back = import_vectors(export_vectors(sv, tmp_path / "ckpt", "bias"), "bias")
    same_vectors(sv, back)  # zero biases of layers 1 and 3 are not entries
    assert back.metadata["model"] == TINY and back.metadata["template"] == "qwen-math"


def test_authors_checkpoint_without_marker_imports_and_loads_steered(tmp_path):
    model, tok = load_model(TINY)
    s = torch.randn(64)
    arch = architecture_of(model)
    for layer in range(arch.n_layers):  # the authors' layout: every layer has a bias, zero but the trained one
        arch.down_proj(layer).bias = nn.Parameter(s.clone() if layer == 2 else torch.zeros(64), requires_grad=False)
    want = logits(model, tok)
    model.save_pretrained(tmp_path / "authors")
    tok.save_pretrained(tmp_path / "authors")
    config_file = tmp_path / "authors" / "config.json"  # transformers 4 (the authors') saved the hub id here
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "_name_or_path": "Qwen/Qwen2.5-Math-7B"}))
    back = import_vectors(tmp_path / "authors", "bias")
    assert [e.name for e in back.entries] == ["resid_post.2"] and torch.equal(back.vector("resid_post.2"), s)
    assert back.metadata["model"] == "Qwen/Qwen2.5-Math-7B"
    loaded, _ = load_model(tmp_path / "authors")
    torch.testing.assert_close(logits(loaded, tok), want, atol=1e-6, rtol=0)


def test_bias_refuses_what_it_cannot_hold_and_leaves_nothing(tmp_path):
    with pytest.raises(InteropError, match=r"steer_v\.2\.1 .*no export format can hold it"):
        export_vectors(vector_set(["resid_post.1", ("steer_v", 2, 1)]), tmp_path / "ckpt", "bias")
    with pytest.raises(InteropError, match=r"attn_out\.1 .*--format lm-eval can hold it"):
        export_vectors(vector_set(["attn_out.1"]), tmp_path / "ckpt", "bias")
    with pytest.raises(InteropError, match=r"resid_pre\.0 .*no export format"):
        export_vectors(vector_set(["resid_pre.0"]), tmp_path / "ckpt", "bias")
    with pytest.raises(VectorFileError, match="layer 7 is out of range"):  # fails after loading the model
        export_vectors(vector_set(["resid_post.7"]), tmp_path / "ckpt", "bias")
    assert nothing_left(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(InteropError, match="already exists"):
        export_vectors(vector_set(["resid_post.1"]), tmp_path / "taken", "bias")


# ---------------------------------------------------------------------------------------------- npy matrix


def test_npy_matrix_rows_are_layers_and_round_trip(tmp_path):
    sv = vector_set(["resid_post.0", "resid_post.3"])
    out = export_vectors(sv, tmp_path / "m.npy", "npy")
    matrix = np.load(out, allow_pickle=False)
    assert matrix.shape == (4, 64) and matrix.dtype == np.float32
    assert np.array_equal(matrix[3], sv.vector("resid_post.3").numpy()) and not matrix[1].any()
    back = import_vectors(out, "npy", model=TINY)
    same_vectors(sv, back)  # the zero rows 1 and 2 are skipped
    assert back.metadata["model"] == TINY and back.metadata["n_layers"] == "4"
    np.save(tmp_path / "zero.npy", np.zeros((4, 64), dtype=np.float32))
    assert len(import_vectors(tmp_path / "zero.npy", "npy", model=TINY)) == 4  # all zero: every row kept


def test_npy_import_checks_shape_and_never_unpickles(tmp_path):
    np.save(tmp_path / "short.npy", np.ones((3, 64), dtype=np.float32))
    with pytest.raises(InteropError, match="3 rows but the model has 4 layers"):
        import_vectors(tmp_path / "short.npy", "npy", model=TINY)
    np.save(tmp_path / "narrow.npy", np.ones((4, 32), dtype=np.float32))
    with pytest.raises(InteropError, match="width 32"):
        import_vectors(tmp_path / "narrow.npy", "npy", model=TINY)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InteropError, match="never unpickles"):
        import_vectors(tmp_path / "obj.npy", "npy", model=TINY)
    with pytest.raises(InteropError, match="pass --model"):
        import_vectors(tmp_path / "short.npy", "npy")


# ------------------------------------------------------------------------------------------ GGUF (llama.cpp)


def test_gguf_layout_as_llama_cpp_reads_it(tmp_path):
    sv = vector_set(["resid_post.1", "resid_post.3", "resid_pre.3"])  # resid_pre.3 lands on direction.2
    out = export_vectors(sv, tmp_path / "v.gguf", "gguf")
    reader = gguf.GGUFReader(out)

    def text(key):
        field = reader.get_field(key)
        return bytes(field.parts[field.data[0]]).decode()

    assert text("general.architecture") == "controlvector"
    assert text("controlvector.model_hint") == "qwen3"
    field = reader.get_field("controlvector.layer_count")
    assert int(field.parts[field.data[0]][0]) == 3
    assert text("rlsteer.model") == TINY and text("rlsteer.model_revision") == ""
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]
    where = {"direction.1": "resid_post.1", "direction.2": "resid_pre.3", "direction.3": "resid_post.3"}
    for name, entry in where.items():
        t = tensors[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [64]
        assert np.array_equal(np.asarray(t.data), sv.vector(entry).numpy())


def test_gguf_round_trip_is_bit_exact(tmp_path):
    sv = vector_set(["resid_post.1", "resid_post.2", "resid_post.3"])
    back = import_vectors(export_vectors(sv, tmp_path / "v.gguf", "gguf"), "gguf")
    same_vectors(sv, back)
    assert back.metadata == sv.metadata


def test_gguf_scale_is_multiplied_in_and_foreign_files_import(tmp_path):
    sv = vector_set(["resid_post.2"])
    sv.scale = 0.5
    back = import_vectors(export_vectors(sv, tmp_path / "v.gguf", "gguf"), "gguf")
    assert back.scale == 1.0 and torch.equal(back.vector("resid_post.2"), sv.vector("resid_post.2"))
    writer = gguf.GGUFWriter(tmp_path / "repeng.gguf", "controlvector")  # as repeng's export_gguf writes it
    writer.add_string("controlvector.model_hint", "qwen3")
    writer.add_uint32("controlvector.layer_count", 2)
    for layer in (0, 3):  # repeng reads direction.0 as model.layers[0]'s output
        writer.add_tensor(f"direction.{layer}", np.full(64, layer + 1.0, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    back = import_vectors(tmp_path / "repeng.gguf", "gguf", model=TINY)
    assert [e.name for e in back.entries] == ["resid_post.0", "resid_post.3"]
    assert back.metadata["model_hint"] == "qwen3" and back.metadata["model"] == TINY


def test_gguf_refuses_block_zero_and_non_residual_entries(tmp_path):
    with pytest.raises(InteropError, match=r"resid_post\.0 .*block N ≥ 1 only; --format bias or npy or lm-eval"):
        export_vectors(vector_set(["resid_post.0"]), tmp_path / "v.gguf", "gguf")
    with pytest.raises(InteropError, match=r"resid_pre\.1 .*block N ≥ 1"):
        export_vectors(vector_set(["resid_pre.1"]), tmp_path / "v.gguf", "gguf")
    with pytest.raises(InteropError, match=r"ln2_out\.2 .*no export format"):
        export_vectors(vector_set(["ln2_out.2"]), tmp_path / "v.gguf", "gguf")
    assert nothing_left(tmp_path)
    (tmp_path / "not.gguf").write_bytes(b"GGUF" + b"\x00" * 10)
    with pytest.raises(InteropError, match="not a readable GGUF"):
        import_vectors(tmp_path / "not.gguf", "gguf")


def test_drop_unsupported_reports_the_norm_share_and_keeps_the_rest(tmp_path):
    values = {Entry("resid_post", 0): torch.tensor([3.0, 0.0]), Entry("resid_post", 1): torch.tensor([0.0, 4.0])}
    sv = SteeringVectors.from_dict(values, metadata={"model": TINY}, scale=2.0)
    kept, dropped = drop_unsupported(sv, "gguf")
    assert [e.name for e in kept.entries] == ["resid_post.1"] and kept.scale == 2.0
    assert torch.equal(kept.vector("resid_post.1"), torch.tensor([0.0, 8.0]))
    # ‖v0‖ / ‖(v0, v1)‖ = 6 / 10 with the scale applied (not 9/25 of the squared norm, not 6/8 of the kept part)
    assert dropped.norms == {"resid_post.0": 6.0} and dropped.share == pytest.approx(0.6)
    assert kept.metadata == {"model": TINY, "dropped_entries": "resid_post.0"}
    assert "resid_post.0 (norm 6): 60.0 % of the vectors' norm" in dropped.describe()
    kept_all, nothing = drop_unsupported(kept, "gguf")
    assert not nothing and nothing.share == 0.0 and kept_all.entries == kept.entries
    back = import_vectors(export_vectors(kept, tmp_path / "v.gguf", "gguf"), "gguf")
    assert [e.name for e in back.entries] == ["resid_post.1"]
    assert torch.equal(back.vector("resid_post.1"), kept.vector("resid_post.1"))
    with pytest.raises(InteropError, match=r"can hold none of these entries \(ln2_out\.2, resid_pre\.0\)"):
        drop_unsupported(vector_set(["ln2_out.2", "resid_pre.0"]), "gguf")


def test_dropped_layer_zero_round_trip_steers_like_the_vector_without_it(tmp_path):
    """export --drop-unsupported, then import: the vector llama.cpp applies, evaluable by rlsteer."""
    sv = vector_set(["resid_post.0", "resid_post.1", "resid_post.2", "resid_post.3"])
    kept, _ = drop_unsupported(sv, "gguf")
    back = import_vectors(export_vectors(kept, tmp_path / "v.gguf", "gguf"), "gguf")
    model, tok = load_model(TINY)
    without_0 = SteeringVectors.from_dict({e: sv.vector(e) for e in sv.entries if e.layer != 0})
    with steer(model, without_0):
        want = logits(model, tok)
    with steer(model, sv):
        full = logits(model, tok)
    with steer(model, back):
        got = logits(model, tok)
    assert torch.equal(got, want) and (full - want).abs().max() > 0.1  # and dropping layer 0 changes the model


# -------------------------------------------------------------------------------- llama.cpp cvec buffer


def llama_cpp_apply(buffer, n_embd, n_layer):
    """llama_adapter_cvec::apply (src/llama-adapter.cpp): block il ≥ 1 takes buffer[n_embd·(il−1) : n_embd·il]."""
    tensors = {}
    for il in range(1, n_layer):
        off = n_embd * (il - 1)  # "buffer doesn't have data for layer 0, since it's never present"
        if off + n_embd <= len(buffer):
            tensors[il] = buffer[off:off + n_embd]
    return tensors


def test_llama_cpp_cvec_layout_starts_at_block_one(tmp_path):
    sv = vector_set(["resid_post.1", "resid_pre.3", "resid_post.3"])  # resid_pre.3 is block 2's output
    sv.scale = 0.5
    want = {1: sv.vector("resid_post.1"), 2: sv.vector("resid_pre.3"), 3: sv.vector("resid_post.3")}
    gguf_file = export_vectors(sv, tmp_path / "v.gguf", "gguf")
    for source in (sv, sv.save(tmp_path / "v.safetensors"), gguf_file):
        buffer = llama_cpp_cvec(source, strength=2.0)
        assert buffer.dtype == np.float32 and buffer.shape == (3 * 64,)  # up to block 3, as llama.cpp's loader
        applied = llama_cpp_apply(buffer, 64, n_layer=4)
        assert sorted(applied) == [1, 2, 3]
        for block, vector in want.items():
            assert np.array_equal(applied[block], 2.0 * vector.numpy()), (source, block)
    gap = llama_cpp_apply(llama_cpp_cvec(vector_set(["resid_post.3"])), 64, n_layer=4)
    assert not gap[1].any() and not gap[2].any() and gap[3].any()


def test_llama_cpp_cvec_refuses_block_zero(tmp_path):
    with pytest.raises(InteropError, match=r"resid_post\.0 .*--drop-unsupported"):
        llama_cpp_cvec(vector_set(["resid_post.0", "resid_post.1"]))
    writer = gguf.GGUFWriter(tmp_path / "repeng.gguf", "controlvector")
    for layer in (0, 1):
        writer.add_tensor(f"direction.{layer}", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InteropError, match="direction.0, which llama.cpp cannot apply"):
        llama_cpp_cvec(tmp_path / "repeng.gguf")


# ------------------------------------------------------------------------------------------------ lm-eval


def lm_eval_steer(model, config):
    """lm_eval/models/hf_steered.py's ``steer`` and ``add``: forward hooks on ``model.base_model``'s modules."""
    modules = dict(model.base_model.named_modules())
    assert set(config) <= set(modules), "lm-eval raises 'Not all hookpoints could be resolved'"

    def hook(info):
        def fn(module, args, output):
            vector = info["steering_vector"].to(output[0].dtype if isinstance(output, tuple) else output.dtype)
            vector = vector * info["steering_coefficient"]
            return (output[0] + vector, *output[1:]) if isinstance(output, tuple) else output + vector
        return fn

    return [modules[name].register_forward_hook(hook(info)) for name, info in config.items()]


def test_lm_eval_file_steers_like_rlsteer(tmp_path):
    sv = vector_set(["resid_post.1", "attn_out.2", "resid_pre.3", "resid_post.3"])
    out = export_vectors(sv, tmp_path / "steer.pt", "lm-eval")
    config = torch.load(out, weights_only=True)
    assert sorted(config) == ["layers.1", "layers.2", "layers.2.self_attn", "layers.3"]
    assert config["layers.1"]["action"] == "add" and config["layers.1"]["bias"] is None
    assert config["layers.1"]["head_index"] is None and config["layers.1"]["steering_vector"].shape == (64,)
    model, tok = load_model(TINY)
    with steer(model, sv):
        want = logits(model, tok)
    handles = lm_eval_steer(model, config)
    got = logits(model, tok)
    for h in handles:
        h.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def lm_eval_0_4_9_steer(model, config):
    """lm-eval 0.4.8/0.4.9's SteeredModel.__init__: ``lambda acts: acts + steering_coefficient * steering_vector``
    built in the loop, so each hook reads the loop's last values when it runs."""
    modules = dict(model.base_model.named_modules())
    hook_to_steer = {}
    for hookpoint, steer_info in config.items():
        steering_coefficient, steering_vector = steer_info["steering_coefficient"], steer_info["steering_vector"]
        hook_to_steer[hookpoint] = lambda acts: acts + steering_coefficient * steering_vector  # noqa: B023

    def hook(name):
        def fn(module, args, output):
            return (hook_to_steer[name](output[0]), *output[1:]) if isinstance(output, tuple) else \
                hook_to_steer[name](output)
        return fn

    return [modules[name].register_forward_hook(hook(name)) for name in config]


@pytest.mark.parametrize("entries, warned", [
    (["resid_post.1", "resid_post.3"], True),
    (["attn_out.2", "resid_post.2"], True),  # one layer, two hook points
    (["resid_post.1", "resid_pre.2"], False),  # the same hook point: one summed vector
    (["resid_post.3"], False),
])
def test_lm_eval_warns_about_old_versions_when_hooks_differ(tmp_path, capsys, entries, warned):
    sv = vector_set(entries)
    path = sv.save(tmp_path / "v.safetensors")
    assert main(["export", str(path), str(tmp_path / "s.pt"), "--format", "lm-eval"]) == 0
    captured = capsys.readouterr()
    assert 'pip install "lm-eval[hf]>=0.4.12"' in captured.out
    assert ("lm-eval 0.4.8 and 0.4.9 add the last one's vector" in captured.err) == warned
    assert bool(export_caveats(sv, "lm-eval")) == warned and export_caveats(sv, "npy") == []
    config = torch.load(tmp_path / "s.pt", weights_only=True)
    model, tok = load_model(TINY)
    with steer(model, sv):
        want = logits(model, tok)
    handles = lm_eval_0_4_9_steer(model, config)
    old = logits(model, tok)
    for h in handles:
        h.remove()
    assert torch.allclose(old, want, atol=1e-5) == (not warned)  # the warning is given exactly when 0.4.9 is wrong


def test_lm_eval_refuses_per_head_entries(tmp_path):
    with pytest.raises(InteropError, match=r"steer_head\.1\.0 .*no export format"):
        export_vectors(vector_set([("steer_head", 1, 0)]), tmp_path / "steer.pt", "lm-eval")
    with pytest.raises(InteropError, match="export only"):
        import_vectors(tmp_path, "lm-eval")
    assert nothing_left(tmp_path)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_export_import_round_trip(tmp_path, capsys):
    path = vector_set(["resid_post.1", "resid_post.3"]).save(tmp_path / "v.safetensors")
    assert main(["export", str(path), str(tmp_path / "v.gguf"), "--format", "gguf"]) == 0
    assert "--control-vector" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "v.gguf"), str(tmp_path / "back.safetensors"), "--format", "gguf"]) == 0
    same_vectors(SteeringVectors.load(path), SteeringVectors.load(tmp_path / "back.safetensors"))
    assert main(["export", str(path), str(tmp_path / "s.pt"), "--format", "lm-eval"]) == 0
    out = capsys.readouterr().out
    folder = model_folder(TINY)  # lm-eval loads a folder or hub id, not rlsteer's alias
    assert f"lm_eval --model steered --model_args pretrained={folder},steer_path={tmp_path / 's.pt'}" in out


def test_cli_export_drop_unsupported(tmp_path, capsys):
    path = vector_set(["resid_post.0", "resid_post.1", "resid_post.2", "resid_post.3"]).save(tmp_path / "v.safetensors")
    assert main(["export", str(path), str(tmp_path / "v.gguf"), "--format", "gguf"]) == 2
    assert "pass --drop-unsupported to leave it out" in capsys.readouterr().err
    assert not (tmp_path / "v.gguf").exists()
    assert main(["export", str(path), str(tmp_path / "v.gguf"), "--format", "gguf", "--drop-unsupported"]) == 0
    out = capsys.readouterr().out
    sv = SteeringVectors.load(path)
    share = float(sv.vector("resid_post.0").norm() / torch.cat(list(sv.vectors().values())).norm())
    assert f"wrote {tmp_path / 'v.gguf'} (gguf, 3 entries)" in out
    assert f"dropped resid_post.0 (norm {sv.vector('resid_post.0').norm():.4g}): {100 * share:.1f} %" in out
    assert sorted(t.name for t in gguf.GGUFReader(tmp_path / "v.gguf").tensors) == [
        "direction.1", "direction.2", "direction.3"]
    assert main(["import", str(tmp_path / "v.gguf"), str(tmp_path / "no0.safetensors"), "--format", "gguf"]) == 0
    back = SteeringVectors.load(tmp_path / "no0.safetensors")
    assert back.metadata["dropped_entries"] == "resid_post.0" and back.metadata["model"] == TINY
    assert main(["export", str(path), str(tmp_path / "m.npy"), "--format", "npy", "--drop-unsupported"]) == 0
    assert "dropped" not in capsys.readouterr().out  # npy holds every entry: nothing to drop, nothing said


@pytest.mark.parametrize("argv, message", [
    (["export", "{v}", "{d}/v.gguf", "--format", "gguf"], "cannot write resid_post.0 as a llama.cpp control vector"),
    (["export", "{v}", "{d}/v.gguf", "--format", "gguf", "--drop-unsupported"], "can hold none of these entries"),
    (["import", "{d}/m.npy", "{d}/o.safetensors", "--format", "npy"], "pass --model"),
    (["import", "{d}/missing.gguf", "{d}/o.safetensors", "--format", "gguf"], "does not exist"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    v = vector_set(["resid_post.0"]).save(tmp_path / "v.safetensors")
    np.save(tmp_path / "m.npy", np.ones((4, 64), dtype=np.float32))
    assert main([a.format(v=v, d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlsteer: error:") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "v.gguf").exists() and not (tmp_path / "o.safetensors").exists()


def test_the_vllm_backend_recognises_a_bias_checkpoint(tmp_path):
    """vLLM's steered classes overwrite down_proj biases, so the backend must refuse such folders up front."""
    from transformers import AutoConfig

    from rlsteer.rollout.vllm import _carries_steering_biases

    plain = model_folder(TINY)
    assert not _carries_steering_biases(str(plain), AutoConfig.from_pretrained(plain))
    folder = export_vectors(vector_set([("resid_post", 2)]), tmp_path / "biased", "bias")
    assert _carries_steering_biases(str(folder), AutoConfig.from_pretrained(folder))
    config = json.loads((folder / "config.json").read_text())
    config.pop("rlsteer_steering")  # the authors' checkpoints carry no marker: the biases themselves tell
    (folder / "config.json").write_text(json.dumps(config))
    assert _carries_steering_biases(str(folder), AutoConfig.from_pretrained(folder))
