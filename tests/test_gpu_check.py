"""The prepared device check runs on a CPU with tiny shapes, so it cannot rot between GPU sessions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_on_cpu_holds_and_writes_its_results(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = report["checks"]
    for name in ("zero_vector", "bias_equals", "cache", "loss_pass", "grads_only"):
        assert checks[f"{name}/float32"]["status"] == checks[f"{name}/bfloat16"]["status"] == "pass"
    assert {checks[k]["status"] for k in ("smoke_training", "eval_and_lens", "analyses", "one_rank_distributed",
                                           "scale")} == {
        "pass"}
    # the trainer's loss pass ran on the device at least once (it runs only in steps with a non-zero advantage)
    assert " 0 with a loss pass" not in checks["smoke_training"]["detail"], checks["smoke_training"]["detail"]
    tiny = report["scale"]["tiny"]
    assert tiny["generate"]["tokens_per_s"] > 0 and tiny["rl_step"]["loss_fwd_bwd_s"] > 0
    assert report["scale"]["matmul_tflops_bf16"] > 0
    assert (tmp_path / "gpu_check.md").read_text().startswith("# rlsteer device check")
    assert "all checks hold" in done.stdout


def test_a_failed_check_is_named_and_exits_nonzero(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    def broken(model, device, dtype):
        raise AssertionError("planted")

    monkeypatch.setattr(gpu_check, "check_grads_only", broken)
    monkeypatch.setattr(gpu_check, "check_smoke_training", lambda *a: "not run here")
    monkeypatch.setattr(gpu_check, "check_eval_and_analysis", lambda *a: "not run here")
    monkeypatch.setattr(gpu_check, "check_one_rank", lambda *a: "not run here")
    assert gpu_check.main(["--device", "cpu", "--quick", "--skip-scale", "--out", str(tmp_path)]) == 1
    checks = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]
    assert checks["grads_only/float32"]["status"] == "fail" and "planted" in checks["grads_only/float32"]["detail"]
