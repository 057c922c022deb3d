"""Checkpoints restore a bit-identical trainer state; broken or foreign checkpoints fail clearly."""

from __future__ import annotations

import pytest
import torch

from rlsteer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rlsteer.rundir import RunDir
from rlsteer.steering import Entry, SteeringVectors


def make():
    sv = SteeringVectors(8, [Entry("resid_post", 0), Entry("attn_out", 1)])
    sv.constrain_orthogonal(("attn_out", 1), torch.ones(1, 8))
    opt = torch.optim.Adam([{"params": [sv.parameter(("resid_post", 0))], "lr": 0.1},
                            {"params": [sv.parameter(("attn_out", 1))], "lr": 0.01}])
    return sv, opt


def step(sv, opt):
    opt.zero_grad()
    noise = torch.randn(8)  # uses the global RNG, which the checkpoint restores
    loss = sum(((v - noise) ** 2).sum() for v in sv.vectors().values())
    loss.backward()
    opt.step()


def test_resume_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    sv, opt = make()
    for _ in range(3):
        step(sv, opt)
    path = save_checkpoint(RunDir(tmp_path), 3, sv, opt, {"data_position": 96})
    for _ in range(3):
        step(sv, opt)
    sv2, opt2 = make()
    meta = load_checkpoint(path, sv2, opt2)
    assert meta["step"] == 3 and meta["extra"] == {"data_position": 96}
    for _ in range(3):
        step(sv2, opt2)
    for e in sv.entries:
        assert torch.equal(sv.parameter(e), sv2.parameter(e))
        assert torch.equal(sv.vector(e), sv2.vector(e))
    assert abs(float(sv2.vector(("attn_out", 1)).detach().sum())) < 1e-6  # still orthogonal to ones


def test_latest_ignores_partial_folders(tmp_path):
    sv, opt = make()
    step(sv, opt)
    save_checkpoint(RunDir(tmp_path), 2, sv, opt)
    save_checkpoint(RunDir(tmp_path), 10, sv, opt)
    (tmp_path / ".step-12-abc").mkdir()          # an interrupted write
    (tmp_path / "step-11").mkdir()               # no state.json: incomplete
    assert RunDir(tmp_path).latest_checkpoint() == tmp_path / "checkpoints" / "step-10"
    assert RunDir(tmp_path / "missing").latest_checkpoint() is None


def test_foreign_or_broken_checkpoint(tmp_path):
    sv, opt = make()
    step(sv, opt)
    path = save_checkpoint(RunDir(tmp_path), 1, sv, opt)
    other = SteeringVectors(8, layers=[5])
    with pytest.raises(CheckpointError, match="holds entries"):
        load_checkpoint(path, other, torch.optim.Adam(other.parameters()))
    (path / "state.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path, *make())
