"""Data-parallel training: two gloo ranks under torchrun give the one-process result, in lockstep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlsteer.distributed import DistributedError, World, checksum, sum_gradients
from rlsteer.metrics import read_metrics
from rlsteer.steering import SteeringVectors
from rlsteer.train import train
from tests.test_train import smoke

ROOT = Path(__file__).resolve().parents[1]


def test_shards_are_contiguous_equal_and_cover_everything():
    shards = [World(rank=r, size=4).shard(12) for r in range(4)]
    assert [list(s) for s in shards] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    with pytest.raises(DistributedError, match="multiple of the number of processes"):
        World(rank=0, size=3).shard(8)


def test_one_rank_gradients_are_left_alone():
    p = torch.nn.Parameter(torch.ones(3))
    assert sum_gradients([p], World()) is False and p.grad is None
    p.grad = torch.full((3,), 2.0)
    assert sum_gradients([p], World()) is True and p.grad.tolist() == [2.0, 2.0, 2.0]


def test_checksum_sees_a_one_ulp_difference():
    a = torch.randn(16)
    b = a.clone()
    b[3] = torch.nextafter(b[3], torch.tensor(1e9))
    assert checksum([a]) == checksum([a.clone()]) and checksum([a]) != checksum([b])


def test_two_gloo_ranks_match_one_process(tmp_path):
    overrides = ["rl.steps=7", "run.checkpoint_every=7"]  # the first rewarded samples appear at step 6
    single = train(smoke(tmp_path / "one", *overrides), log=lambda _: None)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "rlsteer.cli", "train", str(ROOT / "configs" / "smoke.yaml"), f"run.dir={tmp_path / 'two'}",
           "run.check_sync=true", *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("step    7") == 1 and done.stdout.count("done:") == 1  # only rank 0 logs

    one = SteeringVectors.load(single / "vectors.safetensors")
    two = SteeringVectors.load(tmp_path / "two" / "vectors.safetensors")
    assert one.vector("resid_post.3").norm() > 0
    # same rollouts (seeds follow the global prompt index), gradients summed in another order
    torch.testing.assert_close(two.vector("resid_post.3"), one.vector("resid_post.3"), rtol=1e-5, atol=1e-6)
    # both ranks held bit-identical vectors after every step (check_sync raises otherwise) and logged it
    m_two, m_one = read_metrics(tmp_path / "two" / "metrics.jsonl"), read_metrics(single / "metrics.jsonl")
    assert [m["step"] for m in m_two] == list(range(1, 8)) and all(len(m["checksum"]) == 16 for m in m_two)
    for a, b in zip(m_one, m_two, strict=True):  # global metrics, gathered from both ranks
        assert a["reward_mean"] == b["reward_mean"] and a["len_mean"] == b["len_mean"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)


def test_a_reward_function_failing_on_one_rank_stops_every_rank_with_one_line(tmp_path):
    """Kills: ranks that do not agree on a failed scoring (rank 0 then died in the step's next all-reduce with
    gloo's "Connection closed by peer" traceback; with NCCL it would wait)."""
    rewards = tmp_path / "rank_rewards.py"
    rewards.write_text("import os\n\ndef reward(completions, **_):\n    if os.environ['RANK'] == '1':\n"
                       "        raise ValueError('boom on rank 1')\n    return [0.0 for _ in completions]\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "rlsteer.cli", "train", str(ROOT / "configs" / "smoke.yaml"), f"run.dir={tmp_path / 'run'}",
           "reward.kind=python", f"reward.function={rewards}:reward", "rl.steps=2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("rlsteer: error:")]
    assert len(errors) == 2, done.stderr[-3000:]  # one line from each rank, no traceback between them
    assert any("raised ValueError: boom on rank 1" in e for e in errors)
    assert any("a reward function failed on rank 1; the step was not applied" in e for e in errors)
    assert all(f"rlsteer train {tmp_path / 'run' / 'config.yaml'} --resume" in e for e in errors)
    # (torchrun itself still reports the failed workers with its own traceback)
    assert "Connection closed by peer" not in done.stderr and "[rank0]: Traceback" not in done.stderr
