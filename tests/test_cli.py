"""The command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rlsteer import SteeringVectors
from rlsteer.cli import main
from rlsteer.steering import Entry


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "rlsteer.cli", "--help"], capture_output=True, text=True, check=True)
    assert "inspect" in out.stdout and "models" in out.stdout


def test_inspect_table_and_json(tmp_path, capsys):
    sv = SteeringVectors(8, [Entry("resid_post", 1), Entry("steer_v", 2, head=1)], metadata={"model": "m"})
    with torch.no_grad():
        sv.parameter(("resid_post", 1)).fill_(0.5)  # norm = 0.5 * sqrt(8)
    path = sv.save(tmp_path / "v.safetensors", template="qwen-math")
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "resid_post.1" in text and "steer_v.2.1" in text and f"{0.5 * 8 ** 0.5:.4f}" in text
    assert "template" in text and "qwen-math" in text
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["entry"] for r in data["entries"]] == ["resid_post.1", "steer_v.2.1"]
    assert data["metadata"]["model"] == "m"


def test_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlsteer: error:") and err.count("\n") == 1


def test_overrides_may_follow_options(capsys):
    assert main(["train", "smoke", "--dry-run", "rl.steps=3"]) == 0
    assert "steps: 3" in capsys.readouterr().out
    assert main(["eval", "--limit", "2", "--dry-run", "protocol.temperature=0.5"]) == 0
    out = capsys.readouterr().out
    assert "limit: 2" in out and "temperature: 0.5" in out
    with pytest.raises(SystemExit):
        main(["eval", "--dry-run", "--bogus"])
