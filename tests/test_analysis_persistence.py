"""Persistence: unit diagonal, nothing below the injection layer, the pass bound, the Fig. 3 matrix, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from rlsteer.analysis.persistence import PersistenceConfig, capture_blocks, persistence
from rlsteer.cli import main
from rlsteer.errors import RlsteerError
from rlsteer.steering import SteeringVectors, steer
from rlsteer.templates import build_prompt

QUESTIONS = ("What is 2 + 3?", "Compute 7 * 8.", "Solve x + 1 = 4.")


def stacked(d: int = 64, layers=(0, 1, 2, 3), scale: float = 2.0) -> SteeringVectors:
    g = torch.Generator().manual_seed(0)
    return SteeringVectors.from_dict({("resid_post", i): scale * torch.randn(d, generator=g) for i in layers})


def test_blocks_below_the_injection_layer_do_not_move(tiny):
    model, tok = tiny("llama")
    x = torch.tensor([build_prompt(tok, QUESTIONS[0], "qwen-math").ids])
    with torch.no_grad(), capture_blocks(model, range(4)) as base:
        model.model(input_ids=x)
    with torch.no_grad(), steer(model, {2: torch.ones(64)}), capture_blocks(model, range(4)) as steered:
        model.model(input_ids=x)
    assert all(torch.equal(base[ell], steered[ell]) for ell in (0, 1))
    assert torch.allclose(steered[2] - base[2], torch.ones(64).expand_as(base[2]), atol=1e-5)  # ΔF_{2,2} = s_2


@pytest.mark.parametrize("text", ["steered", "base"])
def test_metrics_and_the_cost_bound(tiny, text):
    model, tok = tiny("llama")
    prompts = [build_prompt(tok, q, "qwen-math") for q in QUESTIONS]
    calls = []
    handle = model.model.register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        result = persistence(model, tok, stacked(), prompts, PersistenceConfig(text=text, max_new_tokens=5),
                             progress=False)
    finally:
        handle.remove()
    teacher = [c for c in calls if c[0] == 1 and c[1] > 1]  # one sequence, whole length: a scoring pass
    injections, n = 4, len(prompts)
    expected = n * (1 + injections) if text == "base" else n * 2 * injections
    assert result["passes"] == len(teacher) == expected  # never a pass per (i, ℓ) pair
    records = {(r["injection"], r["layer"]): r for r in result["records"]}
    assert set(records) == {(i, ell) for i in range(4) for ell in range(i, 4)}  # only ℓ ≥ i
    for i in range(4):  # on the diagonal ΔF = s_i at every token
        assert records[i, i]["diff_vector"] == pytest.approx(1.0, abs=1e-6)
        assert records[i, i]["diff_diff"] == pytest.approx(1.0, abs=1e-6)
    assert all(-1.0 <= r["diff_diff"] <= 1.0 + 1e-9 for r in result["records"])
    c = torch.tensor(result["shift_cosines"])
    assert c.shape == (4, 4) and torch.allclose(c, c.T, atol=1e-6) and torch.allclose(c.diag(), torch.ones(4))
    # the last injection layer's final-block mean shift is s_{L-1} itself
    assert records[3, 3]["mean_shift_vs_vector"] == pytest.approx(1.0, abs=1e-6)


def test_dataset_reference_differs_from_the_per_sequence_one(tiny):
    model, tok = tiny("llama")
    prompts = [build_prompt(tok, q, "qwen-math") for q in QUESTIONS]
    seq = persistence(model, tok, stacked(), prompts, PersistenceConfig(max_new_tokens=5), progress=False)
    data = persistence(model, tok, stacked(), prompts, PersistenceConfig(max_new_tokens=5, reference="dataset"),
                       progress=False)
    a = {(r["injection"], r["layer"]): r["diff_diff"] for r in seq["records"]}
    b = {(r["injection"], r["layer"]): r["diff_diff"] for r in data["records"]}
    assert a[0, 0] == pytest.approx(b[0, 0]) and a[0, 3] != pytest.approx(b[0, 3])
    assert [r["diff_vector"] for r in seq["records"]] == [r["diff_vector"] for r in data["records"]]


def block_outputs(model, ids, vector=None):
    """Z_ℓ [T, d] (float64) of every block for one sequence, read by hooks written here, with ``vector`` at
    resid_post of its layer when given."""
    seen = {}
    with torch.no_grad(), steer(model, vector or {}):  # hooks run in order: these after the steering's own
        handles = [layer.register_forward_hook(
            lambda _m, _a, out, n=n: seen.__setitem__(n, (out[0] if isinstance(out, tuple) else out)[0].double()))
            for n, layer in enumerate(model.model.layers)]
        try:
            model.model(input_ids=torch.tensor([ids]))
        finally:
            for h in handles:
                h.remove()
    return seen


@pytest.mark.parametrize("reference", ["sequence", "dataset"])
def test_metrics_equal_a_hand_computation(tiny, reference):
    """Diff-Diff, Diff-Vector and the mean shift recomputed from the teacher-forced sequences.

    Kills: swapping the per-sequence and the dataset Diff-Diff reference; comparing Diff-Vector with the first
    token's shift ΔF_{ℓ,i}[0] (or any other shift) instead of s_ℓ; keeping the positions the reference drops.
    """
    model, tok = tiny("llama")
    # unlike texts and a small vector, so that shifts vary between sequences and the two references differ
    texts = ("2+3", "The quick brown fox jumps over the lazy dog while the cat sleeps", "Solve x + 1 = 4.")
    prompts = [build_prompt(tok, q, "plain") for q in texts]
    vectors = stacked(scale=0.3)
    fed: list[tuple[int, ...]] = []  # the sequences the analysis teacher-forces (one row, whole length)
    handle = model.model.register_forward_pre_hook(
        lambda _m, _a, kw: fed.append(tuple(kw["input_ids"][0].tolist()))
        if kw["input_ids"].shape == (1, kw["input_ids"].shape[1]) and kw["input_ids"].shape[1] > 1 else None,
        with_kwargs=True)
    try:
        result = persistence(model, tok, vectors, prompts, PersistenceConfig(text="base", max_new_tokens=6,
                                                                              reference=reference), progress=False)
    finally:
        handle.remove()
    sequences = list(dict.fromkeys(fed))
    assert len(sequences) == len(prompts)
    records = {(r["injection"], r["layer"]): r for r in result["records"]}
    contrast = {"reference": 0.0, "first_token": 0.0}  # how far the wrong versions would be
    for i in range(4):
        s_i = vectors.vector(("resid_post", i))
        base = [block_outputs(model, ids) for ids in sequences]
        steered = [block_outputs(model, ids, {i: s_i}) for ids in sequences]
        for ell in range(i, 4):
            deltas = [st[ell][:-1] - b[ell][:-1] for st, b in zip(steered, base, strict=True)]  # [T − 1, d] each
            every = torch.cat(deltas)
            s_ell = vectors.vector(("resid_post", ell)).double()
            cos = torch.nn.functional.cosine_similarity
            per_sequence = torch.cat([cos(d, d.mean(0, keepdim=True)) for d in deltas]).mean().item()
            dataset = cos(every, every.mean(0, keepdim=True)).mean().item()
            diff_vector = cos(every, s_ell[None]).mean().item()
            first_token = torch.cat([cos(d, d[:1]) for d in deltas]).mean().item()
            record = records[i, ell]
            assert record["tokens"] == every.shape[0] == sum(len(ids) - 1 for ids in sequences)
            assert record["diff_diff"] == pytest.approx(per_sequence if reference == "sequence" else dataset, abs=1e-5)
            assert record["diff_vector"] == pytest.approx(diff_vector, abs=1e-5)
            assert record["mean_shift_norm"] == pytest.approx(every.mean(0).norm().item(), rel=1e-5)
            contrast["reference"] = max(contrast["reference"], abs(per_sequence - dataset))
            contrast["first_token"] = max(contrast["first_token"], abs(diff_vector - first_token))
    assert min(contrast.values()) > 0.02, contrast  # the checks above tell the right metric from the wrong one


def test_cli_writes_tables_and_both_figures(tmp_path, capsys):
    vectors = stacked()
    vectors.metadata.update(model="tiny-random-llama", template="qwen-math")
    path = vectors.save(tmp_path / "stack.safetensors")
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"problem": q, "answer": "1"}) + "\n" for q in QUESTIONS))
    out = tmp_path / "persistence"
    assert main(["analyze", "persistence", str(path), "--dataset", str(data), "--prompts", "2",
                 "--max-new-tokens", "4", "--out", str(out)]) == 0
    assert {"persistence.jsonl", "persistence.csv", "persistence.md", "shift_cosines.json", "persistence.png",
            "persistence.pdf", "shift_cosines.png", "shift_cosines.pdf"} <= {p.name for p in out.iterdir()}
    assert "Diff-Diff (sequence mean)" in capsys.readouterr().out


def test_a_few_injection_layers_of_an_all_layer_vector(tiny):
    model, tok = tiny("llama")
    prompts = [build_prompt(tok, QUESTIONS[0], "qwen-math")]
    result = persistence(model, tok, stacked(), prompts, PersistenceConfig(max_new_tokens=4, layers=(1, 3)),
                         progress=False)
    assert result["injections"] == [1, 3] and result["passes"] == 2 * 2
    records = {(r["injection"], r["layer"]): r for r in result["records"]}
    assert set(records) == {(1, 1), (1, 2), (1, 3), (3, 3)}
    assert records[1, 2]["diff_vector"] is not None  # compared with s_2 although s_2 was not injected
    with pytest.raises(RlsteerError, match="no resid_post vector at layer"):
        persistence(model, tok, stacked(), prompts, PersistenceConfig(layers=(7,)), progress=False)
