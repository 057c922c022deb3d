"""Every preset in configs/ resolves; the paper recipes carry the authors' hyperparameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlsteer.cli import main
from rlsteer.config import TrainConfig, load_config
from rlsteer.metrics import read_metrics

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.parent.name != "eval")
EVAL_PROTOCOLS = sorted(p.stem for p in (CONFIG_DIR / "eval").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_preset_dry_run_resolves_without_loading_a_model(path, capsys):
    assert main(["train", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# resolved config") and "optim:" in out and "rl:" in out


@pytest.mark.parametrize("name", EVAL_PROTOCOLS)
def test_eval_protocols_resolve(name, capsys):
    assert EVAL_PROTOCOLS == ["gsm8k", "json-reply", "paper", "paper-32k", "paper-greedy", "paper-greedy-32k"]
    assert main(["eval", "--protocol", name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# resolved eval config") and "protocol:" in out and "seeds:" in out


def test_paper_recipes_match_the_authors():
    qwen = load_config(TrainConfig, CONFIG_DIR / "paper" / "qwen2.5-math-7b-all-layers.yaml")
    assert (qwen.rl.prompts_per_step, qwen.rl.samples_per_prompt, qwen.rl.steps) == (128, 16, 314)
    assert (qwen.optim.lr, qwen.optim.warmup_steps, qwen.optim.max_grad_norm) == (1e-3, 10, 2.0)
    assert (qwen.rollout.temperature, qwen.rollout.top_p, qwen.rollout.max_total_tokens) == (1.0, 1.0, 4096)
    assert (qwen.reward.values, qwen.reward.extraction, qwen.rl.baseline) == ("pm1", "boxed", "loo")
    single = load_config(TrainConfig, CONFIG_DIR / "paper" / "qwen2.5-math-7b-single-layer.yaml")
    assert single.steering.lr_per_layer is not None and len(single.steering.lr_per_layer) == 28
    assert single.steering.lr_per_layer[27] == 0.1 and single.steering.lr_per_layer[0] == 3e-3
    llama = load_config(TrainConfig, CONFIG_DIR / "paper" / "llama3.1-8b-instruct-all-layers.yaml")
    assert (llama.optim.lr, llama.rollout.max_total_tokens) == (8e-5, 8192)


@pytest.mark.slow
def test_cpu_demo_preset_raises_the_reward_on_smollm2(tmp_path, capsys):
    path = CONFIG_DIR / "demo-cpu.yaml"
    assert main(["train", str(path), f"run.dir={tmp_path / 'run'}"]) == 0
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    first = sum(m["reward_mean"] for m in metrics[:5]) / 5
    last = sum(m["reward_mean"] for m in metrics[-5:]) / 5
    print(f"demo-cpu reward: first 5 steps {first:+.3f}, last 5 steps {last:+.3f}")
    assert last > first + 0.3
