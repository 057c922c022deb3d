"""SteeringVectors: entries, algebra, orthogonality, files and validation against a model."""

from __future__ import annotations

import pickle

import pytest
import torch

from rlsteer import SteeringVectors, steer
from rlsteer.steering import Entry, SiteError, VectorFileError


def random_set(d=64):
    sv = SteeringVectors(d, [Entry("resid_post", 0), Entry("attn_out", 2), Entry("steer_v", 3, head=1)],
                         metadata={"model": "tiny-random-llama@seed=0", "template": "qwen-math"}, scale=0.5)
    with torch.no_grad():
        for e in sv.entries:
            sv.parameter(e).normal_()
    return sv


def test_zero_initialised_and_trainable_selection():
    sv = SteeringVectors(8, layers=range(4))
    assert [e.name for e in sv.entries] == [f"resid_post.{i}" for i in range(4)]
    assert all(float(v.detach().abs().sum()) == 0.0 for v in sv.vectors().values())
    sv.set_trainable([("resid_post", 2)])
    assert sv.trainable_entries() == [Entry("resid_post", 2)]
    assert [p for p in sv.parameters() if p.requires_grad] == [sv.parameter(("resid_post", 2))]


def test_entry_names_parse_and_validate():
    assert Entry.parse("steer_k.27.3") == Entry("steer_k", 27, 3)
    assert Entry.parse("resid_post.5").name == "resid_post.5"
    with pytest.raises(SiteError, match="unknown site"):
        Entry("mlp_out", 1)
    with pytest.raises(SiteError, match="needs a head index"):
        Entry("steer_head", 1)
    with pytest.raises(SiteError, match="takes no head index"):
        Entry("resid_post", 1, 2)
    with pytest.raises(SiteError, match="bad entry name"):
        Entry.parse("resid_post")


def test_algebra_is_entrywise_with_missing_entries_as_zero():
    a = SteeringVectors.from_dict({0: torch.ones(4), 1: torch.full((4,), 2.0)})
    b = SteeringVectors.from_dict({1: torch.ones(4), 2: torch.full((4,), 3.0)}, scale=2.0)
    total = a - b
    assert [e.name for e in total.entries] == ["resid_post.0", "resid_post.1", "resid_post.2"]
    assert total.vector(("resid_post", 1)).tolist() == [0.0] * 4  # 2 − 2·1: b's scale is applied
    assert total.vector(("resid_post", 2)).tolist() == [-6.0] * 4
    assert (3 * a).vector(("resid_post", 1)).tolist() == [6.0] * 4
    assert (-a).vector(("resid_post", 0)).tolist() == [-1.0] * 4
    with pytest.raises(ValueError, match="width"):
        _ = a + SteeringVectors.from_dict({0: torch.ones(5)})


def test_orthogonal_constraint_holds_through_optimisation():
    torch.manual_seed(0)
    fixed = torch.randn(2, 16)
    sv = SteeringVectors(16, layers=[3])
    sv.constrain_orthogonal(("resid_post", 3), fixed)
    opt = torch.optim.SGD(sv.parameters(), lr=0.2)
    target = torch.randn(16)
    for _ in range(100):
        opt.zero_grad()
        loss = (sv.vector(("resid_post", 3)) - target).pow(2).sum()
        loss.backward()
        opt.step()
    s = sv.vector(("resid_post", 3)).detach()
    assert s.norm() > 0.5
    assert (fixed @ s).abs().max() / (fixed.norm(dim=1).max() * s.norm()) < 1e-6
    # the optimum is the projection of the target onto the orthogonal complement
    q, _ = torch.linalg.qr(fixed.T)
    torch.testing.assert_close(s, target - q @ (q.T @ target), atol=1e-5, rtol=0)


def test_save_load_round_trip_is_bit_exact(tmp_path, tiny):
    sv = random_set()
    path = sv.save(tmp_path / "v.safetensors", config_hash="abc123")
    loaded = SteeringVectors.load(path)
    assert loaded.entries == sv.entries
    for e in sv.entries:
        assert torch.equal(loaded.vector(e), sv.vector(e))
        assert loaded.parameter(e).dtype == torch.float32
    assert loaded.scale == 0.5
    assert loaded.metadata["template"] == "qwen-math"
    assert loaded.metadata["config_hash"] == "abc123"
    assert loaded.trainable_entries() == []
    model, _ = tiny("llama")
    SteeringVectors.load(path, model=model)  # fits: no error
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_save_writes_projected_vectors(tmp_path):
    sv = SteeringVectors(4, layers=[0])
    with torch.no_grad():
        sv.parameter(("resid_post", 0)).copy_(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    sv.constrain_orthogonal(("resid_post", 0), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    loaded = SteeringVectors.load(sv.save(tmp_path / "o.safetensors"))
    assert loaded.vector(("resid_post", 0)).tolist() == [0.0, 1.0, 0.0, 0.0]


def test_for_model_records_identity(tiny):
    model, _ = tiny("qwen2")
    sv = SteeringVectors.for_model(model)
    assert len(sv) == 4
    assert sv.metadata["architecture"] == "qwen2"
    assert sv.metadata["model"] == "tiny-random-qwen2@seed=0"
    assert sv.metadata["n_layers"] == "4"


def test_wrong_model_fails_clearly(tmp_path, tiny):
    model, _ = tiny("llama")
    narrow = SteeringVectors(32, layers=[0], metadata={"model": "other"})
    with pytest.raises(VectorFileError, match="width 32 .made for other. but the model has d_model=64"):
        SteeringVectors.load(narrow.save(tmp_path / "narrow.safetensors"), model=model)
    deep = SteeringVectors(64, layers=[29])
    with pytest.raises(VectorFileError, match="layer 29 is out of range, the model has 4 layers"):
        SteeringVectors.load(deep.save(tmp_path / "deep.safetensors"), model=model)
    heads = SteeringVectors(64, [Entry("steer_head", 1, head=7)])
    with pytest.raises(VectorFileError, match="head 7 is out of range, the model has 4 query heads"):
        steer(model, heads)


def test_unreadable_files_fail_clearly(tmp_path):
    good = random_set().save(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    pickled = tmp_path / "vectors.pt"
    pickled.write_bytes(pickle.dumps({"resid_post.0": [0.0] * 64}))
    for bad in (truncated, pickled):
        with pytest.raises(VectorFileError, match="not a (readable )?safetensors vector file"):
            SteeringVectors.load(bad)
    with pytest.raises(VectorFileError, match="does not exist"):
        SteeringVectors.load(tmp_path / "missing.safetensors")


def test_foreign_tensor_names_and_nan_are_rejected(tmp_path):
    from safetensors.torch import save_file

    save_file({"model.layers.0.mlp.down_proj.bias": torch.zeros(8)}, tmp_path / "bias.safetensors")
    with pytest.raises(VectorFileError, match="is not a steering entry"):
        SteeringVectors.load(tmp_path / "bias.safetensors")
    save_file({"resid_post.0": torch.tensor([float("nan")] * 8)}, tmp_path / "nan.safetensors")
    with pytest.raises(VectorFileError, match="NaN or inf"):
        SteeringVectors.load(tmp_path / "nan.safetensors")
