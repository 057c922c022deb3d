"""Sweeps: per-layer runs (resumable, stackable, as cluster jobs), the orthogonal series, the scale sweep."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlsteer.analysis.sweep import layer_configs, orthogonal_configs
from rlsteer.cli import main
from rlsteer.config import TrainConfig, load_config
from rlsteer.samples import read_samples
from rlsteer.steering import SteeringVectors
from rlsteer.steering.sites import Entry
from tests.test_evaluate import toy_benchmark

QUICK = ["rl.steps=6", "run.checkpoint_every=6", "protocol.max_new_tokens=3", "reward.workers=0"]


def test_run_configs():
    cfg = load_config(TrainConfig, "paper/qwen2.5-math-7b-single-layer")
    runs = layer_configs(cfg, [14, 15], Path("sweep"))
    assert runs[14].steering.layers == (14,) and runs[15].run.path == Path("sweep/layer-15")
    assert runs[14].steering.lr_per_layer == cfg.steering.lr_per_layer  # the authors' per-layer lrs still apply
    series = orthogonal_configs(cfg, 14, 3, Path("o"), original=Path("s14.safetensors"))
    assert [c.steering.orthogonal_to for c in series] == [
        ("s14.safetensors",), ("s14.safetensors", "o/orthogonal-0/vectors.safetensors"),
        ("s14.safetensors", "o/orthogonal-0/vectors.safetensors", "o/orthogonal-1/vectors.safetensors")]


def test_layer_sweep_trains_stacks_evaluates_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["analyze", "sweep", "layers", "smoke", "--layers", "2,3", "--out", str(out), "--seeds", "0",
            "--benchmarks", str(toy_benchmark(tmp_path / "toy.jsonl", 2)), *QUICK]
    assert main(args) == 0
    stacked = SteeringVectors.load(out / "stacked.safetensors")
    assert [e.name for e in stacked.entries] == ["resid_post.2", "resid_post.3"]
    for ell in (2, 3):
        own = SteeringVectors.load(out / f"layer-{ell}" / "vectors.safetensors").vector(Entry("resid_post", ell))
        assert torch.equal(stacked.vector(Entry("resid_post", ell)), own) and own.norm() > 0
    rows = [json.loads(line) for line in (out / "layers.jsonl").read_text().splitlines()]
    assert {(r["label"], r["temperature"]) for r in rows} == {("base", 1.0), ("layer-2", 1.0), ("layer-3", 1.0),
                                                              ("base", 0.0)}
    assert (out / "layers.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(args) == 0  # everything is finished: nothing is trained again
    assert capsys.readouterr().out.count("is finished") == 2


def test_jobs_for_a_cluster(tmp_path, capsys):
    out = tmp_path / "jobs"
    assert main(["analyze", "sweep", "layers", "smoke", "--emit-jobs", "--out", str(out)]) == 0
    lines = [x for x in (out / "jobs.sh").read_text().splitlines() if x.startswith("rlsteer train")]
    assert len(lines) == 4  # tiny-random-llama has 4 layers
    config = load_config(TrainConfig, out / "configs" / "layer-2.yaml")
    assert config.steering.layers == (2,) and config.run.path == out / "layer-2"


def test_orthogonal_series_stays_orthogonal(tmp_path):
    out = tmp_path / "orth"
    assert main(["analyze", "sweep", "orthogonal", "smoke", "--layer", "3", "--count", "2", "--out", str(out),
                 "--seeds", "0", "--benchmarks", str(toy_benchmark(tmp_path / "toy.jsonl", 2)), *QUICK]) == 0
    rows = [json.loads(line) for line in (out / "orthogonal.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and rows[1]["max_abs_cos_to_earlier"] < 1e-5
    assert (out / "orthogonal.png").is_file()


def test_scale_zero_is_the_base_model(tmp_path):
    g = torch.Generator().manual_seed(0)
    vectors = SteeringVectors.from_dict({("resid_post", 2): 4 * torch.randn(64, generator=g)})
    vectors.metadata.update(model="tiny-random-llama", template="qwen-math")
    path = vectors.save(tmp_path / "v.safetensors")
    bench = toy_benchmark(tmp_path / "toy.jsonl", 2)
    out = tmp_path / "scale"
    assert main(["analyze", "sweep", "scale", str(path), "--scales", "0,1", "--out", str(out), "--seeds", "0",
                 "--benchmarks", str(bench), "protocol.max_new_tokens=3", "reward.workers=0"]) == 0
    assert main(["eval", "--model", "tiny-random-llama", "--template", "qwen-math", "--benchmarks", str(bench),
                 "--seeds", "0", "--out", str(tmp_path / "base"), "protocol.max_new_tokens=3",
                 "reward.workers=0", "--protocol", "gsm8k"]) == 0

    def completions(folder: Path) -> list[str]:
        return [r["completion"] for r in read_samples(folder / "samples" / "toy.seed0.jsonl")]

    assert completions(out / "eval" / "T1" / "scale-0") == completions(tmp_path / "base")
    assert completions(out / "eval" / "T1" / "scale-1") != completions(tmp_path / "base")
    assert (out / "scale.png").is_file()


def test_a_sweep_of_reward_function_runs_evaluates_with_those_functions(tmp_path, monkeypatch):
    # a sweep once trained with the config's reward functions and evaluated with Math-Verify
    from rlsteer.analysis import sweep

    seen = {}
    monkeypatch.setattr(sweep, "run_layer_sweep", lambda train_cfg, eval_cfg, *a, **k: seen.update(cfg=eval_cfg))
    monkeypatch.setattr(sweep, "run_orthogonal", lambda train_cfg, eval_cfg, *a, **k: seen.update(cfg=eval_cfg))
    trained = load_config(TrainConfig, "json-cpu").reward
    for mode in (["layers", "json-cpu", "--layers", "3"], ["orthogonal", "json-cpu", "--layer", "3"]):
        assert main(["analyze", "sweep", *mode, "--out", str(tmp_path / "s")]) == 0
        reward = seen.pop("cfg").reward
        assert [f.function for f in reward.functions] == [f.function for f in trained.functions]
        assert [f.weight for f in reward.functions] == [f.weight for f in trained.functions]
        assert reward.success_above == trained.success_above
    assert main(["analyze", "sweep", "layers", "smoke", "--layers", "3", "--out", str(tmp_path / "m")]) == 0
    assert seen["cfg"].reward.functions == ()  # a Math-Verify (here first-token) run keeps Math-Verify
