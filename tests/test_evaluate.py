"""Evaluation: target resolution, per-sample records, resume, aggregation by hand, protocol record, tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlsteer import evaluate as ev
from rlsteer.cli import main
from rlsteer.config import EvalConfig, load_config
from rlsteer.errors import RlsteerError
from rlsteer.evaluate import EvalError, evaluate
from rlsteer.results import ResultsError, compare_table, summarize
from rlsteer.samples import read_samples, sample_seed
from rlsteer.steering import SteeringVectors, steer
from rlsteer.steering.patching import patch_from
from rlsteer.steering.sites import Entry
from rlsteer.targets import TargetError, resolve_targets, steering_for
from rlsteer.templates import build_prompt


def toy_benchmark(path: Path, n: int = 3) -> Path:
    rows = [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_cfg(tmp_path: Path, *overrides: str) -> EvalConfig:
    bench = toy_benchmark(tmp_path / "toy.jsonl")
    return load_config(EvalConfig, "eval/gsm8k", [
        "model.name=tiny-random-llama", f"protocol.benchmarks=[{bench}]", "protocol.n={toy: 2}",
        "protocol.max_new_tokens=6", "protocol.seeds=[0, 1]", "reward.workers=0", "engine.chunk=4",
        f"out={tmp_path / 'out'}", *overrides])


def test_sample_seeds_are_distinct_and_stable():
    seeds = {sample_seed(s, b, i, k) for s in range(3) for b in ("aime24", "math500") for i in range(40)
             for k in range(32)}
    assert len(seeds) == 3 * 2 * 40 * 32
    assert sample_seed(1, "aime24", 3, 4) == sample_seed(1, "aime24", 3, 4)


def test_records_resume_and_match_an_uninterrupted_run(tmp_path, monkeypatch):
    whole = evaluate(tiny_cfg(tmp_path / "a"), log=lambda _: None)[0]

    cfg = tiny_cfg(tmp_path / "b")
    real = ev.make_backend
    calls = {"n": 0}

    class Interrupting:  # the real HF backend, stopped like a user's Ctrl-C in its second chunk
        def __init__(self, inner):
            self.inner = inner

        def generate(self, *args):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return self.inner.generate(*args)

        def close(self):
            self.inner.close()

    monkeypatch.setattr(ev, "make_backend", lambda *a, **k: Interrupting(real(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, log=lambda _: None)
    part = read_samples(tmp_path / "b" / "out" / "samples" / "toy.seed0.jsonl")
    assert len(part) == 4  # the first chunk (scored while the second was generating) was kept
    assert not (tmp_path / "b" / "out" / "samples" / "toy.seed1.jsonl").exists()
    with (tmp_path / "b" / "out" / "samples" / "toy.seed0.jsonl").open("a") as f:
        f.write('{"benchmark": "toy", "cut sho')  # a write cut off by the interruption
    monkeypatch.setattr(ev, "make_backend", real)
    resumed = evaluate(cfg, log=lambda _: None)[0]

    for seed in (0, 1):
        a = read_samples(tmp_path / "a" / "out" / "samples" / f"toy.seed{seed}.jsonl")
        b = read_samples(tmp_path / "b" / "out" / "samples" / f"toy.seed{seed}.jsonl")
        assert len(a) == 3 * 2 and sorted(map(json.dumps, a)) == sorted(map(json.dumps, b))
    assert resumed["benchmarks"] == whole["benchmarks"]
    record = read_samples(tmp_path / "a" / "out" / "samples" / "toy.seed0.jsonl")[0]
    assert {"problem_id", "prompt", "completion", "answer", "reward", "finish_reason", "length", "logprob",
            "sample_seed"} <= set(record)
    assert record["logprob"] < 0 and record["length"] == 6 and record["finish_reason"] == "length"


def test_results_record_the_protocol(tmp_path):
    vectors = SteeringVectors(64, layers=[1])
    with torch.no_grad():
        vectors.parameter(Entry("resid_post", 1)).normal_()
    vectors.metadata.update(model="tiny-random-llama", template="plain", prefix="To")
    path = vectors.save(tmp_path / "v.safetensors")
    results = evaluate(tiny_cfg(tmp_path, f"target.vectors={path}", "model.name=null"), log=lambda _: None)[0]
    p = results["protocol"]
    assert p["config"]["model"]["name"] == "tiny-random-llama"  # from the vector file
    assert p["config"]["target"]["template"] == "plain" and p["config"]["target"]["prefix"] == "To"
    assert p["config"]["protocol"]["temperature"] == 1.0 and p["config"]["protocol"]["seeds"] == [0, 1]
    assert p["samples_per_problem"] == {"toy": 2} and len(p["vectors_sha256"]) == 64
    assert p["data"]["toy"]["problems"] == 3 and len(p["data"]["toy"]["sha256"]) == 64
    assert p["versions"]["math-verify"] and p["versions"]["rlsteer"]
    prompt = read_samples(tmp_path / "out" / "samples" / "toy.seed0.jsonl")[0]["prompt"]
    assert prompt.endswith("Assistant: To") or prompt.rstrip().endswith("To")
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["benchmarks"] == results["benchmarks"]
    assert (tmp_path / "out" / "results.md").read_text().startswith("v")

    with pytest.raises(EvalError, match="another protocol"):  # same out dir, other sampling: refused
        evaluate(tiny_cfg(tmp_path, f"target.vectors={path}", "protocol.temperature=0.5"), log=lambda _: None)


def test_aggregation_by_hand(tmp_path):
    """Two problems, n = 2, two seeds, rewards written by hand."""
    cfg = load_config(EvalConfig, None, ["protocol.benchmarks=[toy]", "protocol.n={toy: 2}", "protocol.seeds=[0, 1]"])
    rewards = {0: [[1, 0], [0, 0]], 1: [[1, 1], [0, 1]]}  # seed → problem → sample
    (tmp_path / "samples").mkdir()
    for seed, table in rewards.items():
        lines = [json.dumps({"problem_index": i, "sample": k, "reward": r})
                 for i, row in enumerate(table) for k, r in enumerate(row)]
        (tmp_path / "samples" / f"toy.seed{seed}.jsonl").write_text("\n".join(lines) + "\n")
    problems = {"toy": [None, None]}
    results = summarize(tmp_path, cfg, problems, {"target": "t"})  # type: ignore[arg-type]
    toy = results["benchmarks"]["toy"]
    # seed 0: first = (1 + 0)/2 = 0.5, avg = (0.5 + 0)/2 = 0.25, pass@2 = (1 + 0)/2 = 0.5
    # seed 1: first = (1 + 0)/2 = 0.5, avg = (1 + 0.5)/2 = 0.75, pass@2 = (1 + 1)/2 = 1.0
    assert toy["seeds"]["0"]["avg"] == 0.25 and toy["seeds"]["1"]["avg"] == 0.75
    assert toy["first"] == {"mean": 0.5, "std": 0.0}
    assert toy["avg"] == {"mean": 0.5, "std": 0.25}  # population std of (0.25, 0.75)
    assert toy["pass@2"] == {"mean": 0.75, "std": 0.25}
    assert "headline" not in results  # only with the six paper benchmarks

    (tmp_path / "samples" / "toy.seed1.jsonl").write_text(json.dumps({"problem_index": 0, "sample": 0,
                                                                      "reward": 1}) + "\n")
    with pytest.raises(ResultsError, match="1 of 4 samples"):
        summarize(tmp_path, cfg, problems, {"target": "t"})  # type: ignore[arg-type]


def test_greedy_protocol_forces_one_sample():
    cfg = load_config(EvalConfig, "eval/paper", ["protocol.temperature=0"])  # the paper's n=32 made greedy
    assert cfg.protocol.samples("aime24") == 1
    with pytest.raises(RlsteerError, match="protocol.n asks for several samples"):  # asked for explicitly
        load_config(EvalConfig, "eval/paper-greedy", ["protocol.n={aime24: 32}"])
    paper = load_config(EvalConfig, "eval/paper")
    assert [paper.protocol.samples(b) for b in paper.protocol.benchmarks] == [32, 32, 32, 1, 1, 1]
    assert paper.protocol.seeds == (0, 1, 2) and paper.protocol.temperature == 1.0


def write_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  name: tiny-random-llama\n")
    for step in (2, 4):
        SteeringVectors(64, layers=[1]).save(run / "checkpoints" / f"step-{step}" / "vectors.safetensors")
    SteeringVectors(64, layers=[1]).save(run / "vectors.safetensors")
    return run


def test_run_directories_resolve_to_latest_one_or_every_checkpoint(tmp_path):
    run = write_run(tmp_path)
    latest = resolve_targets(load_config(EvalConfig, None, [f"target.vectors={run}"]))
    assert [(t.vectors, t.out) for t in latest] == [(run / "vectors.safetensors", run / "eval" / "latest")]
    one = resolve_targets(load_config(EvalConfig, None, [f"target.vectors={run}", "target.step=4",
                                                         "target.prefix=To"]))
    assert one[0].vectors == run / "checkpoints" / "step-4" / "vectors.safetensors"
    assert one[0].out == run / "eval" / "step-4-prefix-To"
    every = resolve_targets(load_config(EvalConfig, None, [f"target.vectors={run}", "target.step=all"]))
    assert [t.out.name for t in every] == ["step-2", "step-4"]
    with pytest.raises(TargetError, match=r"no checkpoint step-3; it has steps \[2, 4\]"):
        resolve_targets(load_config(EvalConfig, None, [f"target.vectors={run}", "target.step=3"]))
    with pytest.raises(TargetError, match="neither a vector file nor a run directory"):
        resolve_targets(load_config(EvalConfig, None, [f"target.vectors={tmp_path}"]))


def test_patches_move_the_layer_vector_into_the_block_it_feeds():
    vectors = SteeringVectors(8, layers=[5])
    with torch.no_grad():
        vectors.parameter(Entry("resid_post", 5)).fill_(1.0)
    cfg = load_config(EvalConfig, None, ["target.patch=steer_v", "target.patch_head=1", "target.scale=2"])
    patch = steering_for(vectors, cfg)
    assert list(patch) == [Entry("steer_v", 6, 1)] and patch[Entry("steer_v", 6, 1)].tolist() == [2.0] * 8
    assert list(patch_from(SteeringVectors(8, layers=[3], site="resid_pre"), "full")) == [Entry("full", 3)]
    with pytest.raises(TargetError, match="needs a head"):
        steering_for(SteeringVectors(8, layers=[5]), load_config(EvalConfig, None, ["target.patch=steer_v"]))
    with pytest.raises(TargetError, match=r"layers \[0, 5\]; name one"):
        steering_for(SteeringVectors(8, layers=[0, 5]), load_config(EvalConfig, None, ["target.patch=full"]))


def test_a_full_patch_reproduces_the_unmodified_vector(tiny):
    """full at block ℓ+1 = resid_post ℓ: the paper's "s26 unmodified" baseline, bit for bit."""
    model, tok = tiny("llama")
    g = torch.Generator().manual_seed(0)
    vectors = SteeringVectors.from_dict({("resid_post", 1): torch.randn(64, generator=g)})
    ids = torch.tensor([build_prompt(tok, "What is 2 + 3?", "qwen-math").ids])
    with torch.no_grad():
        with steer(model, vectors):
            want = model(ids).logits
        with steer(model, patch_from(vectors, "full")):
            got = model(ids).logits
    assert torch.equal(want, got)


def test_compare_puts_results_side_by_side(tmp_path, capsys):
    def result(name: str, value: float) -> Path:
        out = tmp_path / name
        out.mkdir()
        (out / "results.json").write_text(json.dumps({"target": name, "benchmarks": {
            "gsm8k": {"n": 1, "problems": 10, "avg": {"mean": value, "std": 0.0}}}}))
        return out

    md, table = compare_table([json.loads((result(n, v) / "results.json").read_text())
                               for n, v in (("base", 0.1), ("steered", 0.25))])
    assert md.splitlines()[2] == "| base | 10.0 ± 0.0 |" and md.splitlines()[3] == "| steered | 25.0 ± 0.0 |"
    assert table.splitlines()[0] == "target,gsm8k_mean,gsm8k_std"
    assert main(["eval", "--compare", str(tmp_path / "base"), str(tmp_path / "steered")]) == 0
    assert "| steered | 25.0 ± 0.0 |" in capsys.readouterr().out


def test_cli_dry_run_and_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--protocol", "paper", "--limit", "5", "--prefix", "To", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "limit: 5" in out and "prefix: To" in out and "aime24: 32" in out
    assert main(["eval", str(tmp_path / "missing.safetensors"), "--limit", "1"]) == 2
    assert "neither a vector file nor a run directory" in capsys.readouterr().err
    assert not (tmp_path / "evals").exists()  # nothing written for a bad target


@pytest.mark.slow
def test_smollm2_on_a_gsm8k_slice_with_and_without_a_vector(tmp_path):
    common = ["protocol.limit=8", "protocol.max_new_tokens=128", "protocol.temperature=0", "protocol.seeds=[0]",
              "target.template=chat", "protocol.extraction=any"]
    base = evaluate(load_config(EvalConfig, "eval/gsm8k", [*common, f"out={tmp_path / 'base'}"]),
                    log=lambda _: None)[0]
    vectors = SteeringVectors(576, layers=list(range(30)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for e in vectors.entries:
            vectors.parameter(e).copy_(0.5 * torch.randn(576, generator=g))
    path = vectors.save(tmp_path / "v.safetensors", model="smollm2-135m-instruct")
    steered = evaluate(load_config(EvalConfig, "eval/gsm8k", [*common, f"target.vectors={path}",
                                                              f"out={tmp_path / 'steered'}"]), log=lambda _: None)[0]
    a = read_samples(tmp_path / "base" / "samples" / "gsm8k.seed0.jsonl")
    b = read_samples(tmp_path / "steered" / "samples" / "gsm8k.seed0.jsonl")
    assert len(a) == len(b) == 8 and [r["completion"] for r in a] != [r["completion"] for r in b]
    assert all(r["gold"] for r in a) and base["protocol"]["data"]["gsm8k"]["sha256"]
    for r in (base, steered):
        assert 0.0 <= r["benchmarks"]["gsm8k"]["avg"]["mean"] <= 1.0


def test_paper_protocol_runs_offline_on_the_packaged_benchmarks(tmp_path, monkeypatch):
    monkeypatch.delenv("RLSTEER_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--protocol", "paper", "--limit", "2", "--model", "tiny-random-qwen3", "--seeds", "0",
                 "protocol.max_new_tokens=4", "protocol.n={aime24: 2, aime25: 2, amc23: 2}",
                 "--out", str(tmp_path / "out")]) == 0
    protocol = json.loads((tmp_path / "out" / "protocol.json").read_text())
    assert set(protocol["data"]) == {"aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench"}
    for bench, record in protocol["data"].items():
        assert record["packaged"] == f"{bench}.jsonl.gz" and record["problems"] == 2 and len(record["sha256"]) == 64
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(read_samples(tmp_path / "out" / "samples" / "aime24.seed0.jsonl")) == 2 * 2
    assert results["headline"]["benchmarks"] == sorted(protocol["data"]) and 0 <= results["headline"]["mean"] <= 1
