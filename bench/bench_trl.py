"""One RL step of rlsteer vs TRL's RLOOTrainer on the same model, prompts and budget, side by side.

Run (needs the ``bench`` extra: ``.venv/bin/pip install -e '.[bench]'``):
    .venv/bin/python bench/bench_trl.py [--steps 3] [--rounds 1]

Both train a steering-only parameterisation of the frozen SmolLM2-135M-Instruct on the ``demo-cpu`` task
(8 one-digit additions × 8 samples per step, ≤ 32 new tokens, T = 1, HF generation, micro-batches of 16,
one Adam step per round, no KL, one iteration):

* **rlsteer**: ``rlsteer.train.train`` with an all-layer ``resid_post`` vector (= a ``down_proj`` bias), once
  with ``rl.share_prompts=false`` (each sample's prompt recomputed in the loss pass, as before this change)
  and once with the default ``true``;
* **TRL**: ``trl.RLOOTrainer`` (leave-one-out baseline, ``beta=0``, ``num_iterations=1``,
  ``normalize_advantages=False``) on the same model whose only trainable parameters are a zero
  ``mlp.down_proj.bias`` per layer, the same prompts (rendered by rlsteer's chat template) and the same
  Math-Verify reward.

Each run trains ``--steps`` steps; the first is a warm-up and is left out. Reported: the mean step time and
where it goes (generation, reward, the extra no-grad log-prob pass TRL makes, the loss's forward + backward),
and the ratio rlsteer / TRL. ``--rounds 2`` repeats the three runs interleaved.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from rlsteer.config import TrainConfig, load_config
from rlsteer.data import load_problems
from rlsteer.metrics import read_metrics
from rlsteer.models import DEFAULT_MODEL, load_model
from rlsteer.rewards import RewardPool
from rlsteer.templates import build_prompt
from rlsteer.train import batch_indices, train

PRESET = "demo-cpu"
MICRO = 16  # samples per micro-batch on both sides


def rlsteer_steps(steps: int, share: bool, root: Path) -> list[dict[str, float]]:
    cfg = load_config(TrainConfig, PRESET, [f"rl.steps={steps}", f"rl.share_prompts={str(share).lower()}",
                                            f"run.dir={root / ('rlsteer-shared' if share else 'rlsteer')}",
                                            "run.checkpoint_every=1000", "reward.workers=0",
                                            f"rl.micro_batch_size={MICRO}"])
    run = train(cfg, log=lambda _: None)
    rows = []
    for m in read_metrics(run / "metrics.jsonl")[1:]:
        rows.append({"generate": m["time_generate"], "reward": m["time_reward"], "logprobs (no grad)": 0.0,
                     "loss fwd+bwd": m["time_backward"], "optimizer": m["time_optim"],
                     "step": m["time_generate"] + m["time_reward"] + m["time_backward"] + m["time_optim"]})
    return rows


def trl_steps(steps: int, root: Path) -> list[dict[str, float]]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    cfg = load_config(TrainConfig, PRESET)
    model, tok = load_model(DEFAULT_MODEL)
    for layer in model.model.layers:  # the steering-only parameterisation: a zero, trainable down_proj bias
        down = layer.mlp.down_proj
        down.bias = torch.nn.Parameter(torch.zeros(down.out_features))
    problems = load_problems(cfg.data.dataset)
    order = [i for s in range(steps)
             for i in batch_indices(len(problems), s, cfg.rl.prompts_per_step, cfg.rl.seed + cfg.data.shuffle_seed)]
    rows = [{"prompt": tok.decode(build_prompt(tok, problems[i].problem, cfg.data.template).ids),
             "answer": problems[i].answer} for i in order]
    pool = RewardPool(workers=0)

    def reward(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return pool.score(completions, answer, cfg.data.template, cfg.reward.extraction).rewards

    args = RLOOConfig(
        output_dir=str(root / "trl"), use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        max_steps=steps, per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=cfg.rl.prompts_per_step * cfg.rl.samples_per_prompt // MICRO,
        num_generations=cfg.rl.samples_per_prompt, max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature, top_p=1.0, top_k=0, beta=0.0, num_iterations=1,
        normalize_advantages=False, learning_rate=cfg.optim.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=cfg.optim.max_grad_norm, shuffle_dataset=False, seed=0,
        remove_unused_columns=False, bf16=False, disable_dropout=True, dataloader_num_workers=0)
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok)
    phases: dict[str, float] = defaultdict(float)

    def timed(name: Callable[[], str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name()] += time.perf_counter() - t0
        return wrapper

    trainer._generate = timed(lambda: "generate", trainer._generate)  # type: ignore[method-assign]
    trainer._calculate_rewards = timed(lambda: "reward", trainer._calculate_rewards)  # type: ignore[method-assign]
    trainer._get_per_token_logps_and_entropies = timed(  # type: ignore[method-assign]
        lambda: "loss fwd+bwd" if torch.is_grad_enabled() else "logprobs (no grad)",
        trainer._get_per_token_logps_and_entropies)
    out: list[dict[str, float]] = []

    class Steps(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            phases.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            out.append({**phases, "step": time.perf_counter() - self.t0})

    trainer.add_callback(Steps())
    original = torch.Tensor.backward
    torch.Tensor.backward = timed(lambda: "backward", original)  # type: ignore[method-assign]
    try:
        trainer.train()
    finally:
        torch.Tensor.backward = original  # type: ignore[method-assign]
        pool.close()
    for row in out:  # the loss's forward is timed inside the log-prob call; its backward separately
        row["loss fwd+bwd"] = row.get("loss fwd+bwd", 0.0) + row.pop("backward", 0.0)
        row["optimizer"] = row["step"] - sum(v for k, v in row.items() if k != "step")
    return out[1:]


PHASES = ("generate", "reward", "logprobs (no grad)", "loss fwd+bwd", "optimizer", "step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="steps per run (the first is a warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of the three runs")
    parser.add_argument("--json", type=Path, help="also write the per-step rows here")
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, list[dict[str, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            root = Path(tmp) / f"round-{r}"
            results["rlsteer, prompts recomputed"] += rlsteer_steps(args.steps, False, root)
            results["rlsteer, prompts shared"] += rlsteer_steps(args.steps, True, root)
            results["TRL RLOOTrainer"] += trl_steps(args.steps, root)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, transformers {version('transformers')}, trl {version('trl')}, "
          f"{time.strftime('%Y-%m-%d')}; {args.steps - 1} timed steps × {args.rounds} round(s) each\n")
    print("| trainer | " + " | ".join(f"{p} s" for p in PHASES) + " | × TRL |")
    print("|---|" + "---:|" * (len(PHASES) + 1))
    trl = statistics.fmean(row["step"] for row in results["TRL RLOOTrainer"])
    for name, rows in results.items():
        means = [statistics.fmean(row.get(p, 0.0) for row in rows) for p in PHASES]
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in means) + f" | {means[-1] / trl:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
