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
from rlsteer.interop import InteropError, export_vectors, import_vectors
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


@pytest.mark.parametrize("argv, message", [
    (["export", "{v}", "{d}/v.gguf", "--format", "gguf"], "cannot write resid_post.0 as a llama.cpp control vector"),
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
