"""Δp: rows sum to zero, a zero vector shifts nothing, chunked projection equals the full model, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from rlsteer.analysis.token_shift import (
    ShiftConfig,
    batch_shifts,
    first_position_table,
    group_by_token,
    position_shifts,
    sequence_shifts,
    token_shifts,
)
from rlsteer.cli import main
from rlsteer.steering import SteeringVectors, steer
from rlsteer.templates import build_prompt


def reference_shift(model, vectors, ids, start):
    """Δp by hand: steered minus base next-token probabilities from `start` on, each one plain forward."""
    x = torch.tensor([list(ids)])
    with torch.no_grad():
        with steer(model, vectors):
            p_s = torch.softmax(model(x).logits[0, start:], -1)
        p_b = torch.softmax(model(x).logits[0, start:], -1)
    return p_s - p_b  # [T - start, vocab]


def test_dp_sums_to_zero_at_every_position():
    g = torch.Generator().manual_seed(0)
    out = position_shifts(torch.randn(7, 50, generator=g), torch.randn(7, 50, generator=g))
    assert torch.allclose(out["dp"].sum(-1), torch.zeros(7), atol=1e-6)
    assert (out["dst_dp"] > 0).all() and (out["src_dp"] < 0).all()


def test_zero_vector_shifts_nothing_and_chunks_equal_the_full_model(tiny):
    model, tok = tiny("llama")
    ids = build_prompt(tok, "What is 2 + 3?", "qwen-math").ids + (11, 12, 13)
    start = len(ids) - 4
    zero = sequence_shifts(model, SteeringVectors(64, layers=[0, 2]), ids, start, track=range(64))
    assert torch.equal(zero["dst_dp"], torch.zeros(4)) and torch.equal(zero["tracked"], torch.zeros(4, 64))

    g = torch.Generator().manual_seed(1)
    vectors = SteeringVectors.from_dict({("resid_post", 2): 3 * torch.randn(64, generator=g)})
    every = list(range(model.config.vocab_size))
    out = sequence_shifts(model, vectors, ids, start, chunk=3, track=every)  # chunks of 3 positions
    shift = reference_shift(model, vectors, ids, start)
    torch.testing.assert_close(out["tracked"], shift, atol=1e-6, rtol=0)
    assert torch.allclose(out["tracked"].sum(-1), torch.zeros(4), atol=1e-5)
    assert out["dst"].tolist() == shift.argmax(-1).tolist()


def test_sequences_teacher_forced_together_equal_each_alone(tiny):
    """Packed rows (two sequences in one, one alone by the token limit) = each sequence through the full model
    (kills attention across sequences, positions that do not restart, misplaced slices)."""
    model, tok = tiny("qwen3")
    g = torch.Generator().manual_seed(2)
    vectors = SteeringVectors.from_dict({("resid_post", 1): 3 * torch.randn(64, generator=g)})
    items = [(build_prompt(tok, q, "qwen-math").ids + extra, len(build_prompt(tok, q, "qwen-math").ids) - 1)
             for q, extra in (("What is 2 + 3?", (11, 12, 13)), ("Hi", (7,)), ("Solve x + 1 = 2.", (5, 6)))]
    every = list(range(model.config.vocab_size))
    together = batch_shifts(model, vectors, items, track=every, max_tokens=len(items[0][0]) + len(items[1][0]))
    for (ids, start), out in zip(items, together, strict=True):
        shift = reference_shift(model, vectors, ids, start)
        torch.testing.assert_close(out["tracked"], shift, atol=1e-6, rtol=0)
        assert out["dst"].tolist() == shift.argmax(-1).tolist()


def stop_vector(model, tok, scale: float = 40.0) -> SteeringVectors:
    """A last-layer vector along <|im_end|>'s unembedding row: at a low temperature the model stops at once.

    (tiny-random-qwen3: its untied lm_head has a real <|im_end|> row; tied tiny models zero the pad row.)
    """
    end = tok.convert_tokens_to_ids("<|im_end|>")
    row = model.lm_head.weight[end].detach()
    return SteeringVectors.from_dict({("resid_post", 3): scale * row / row.norm()})


def test_records_cover_every_generation_position_of_stopped_samples(tiny):
    model, tok = tiny("qwen3")
    prompts = [build_prompt(tok, q, "qwen-math") for q in ("What is 2 + 3?", "Compute 7 * 8.", "Solve x = 1.")]
    vectors = stop_vector(model, tok)
    records, kept = token_shifts(model, tok, vectors, prompts, ShiftConfig(max_new_tokens=8, temperature=0.05),
                                 track=("<|im_end|>",), progress=False)
    assert kept and all(r.finish_reason == "stop" for r in kept)
    for seq, r in enumerate(kept):  # positions len(prompt)−1 … end: completion length + 1 of them
        assert [x["position"] for x in records if x["sequence"] == seq] == list(range(r.num_tokens + 1))
    first = [x for x in records if x["position"] == 0]
    assert all(x["dst"] == "<|im_end|>" and x["dp[<|im_end|>]"] == x["dst_dp"] > 0.5 for x in first)
    assert first_position_table(records)[0] == {"token": "<|im_end|>", "count": len(kept), "share": 1.0,
                                                "mean_dp": sum(x["dst_dp"] for x in first) / len(first),
                                                "max_dp": max(x["dst_dp"] for x in first)}
    groups = group_by_token(records)
    assert [g["max"] for g in groups] == sorted((g["max"] for g in groups), reverse=True)
    assert sum(g["count"] for g in groups) == len(records)


def test_only_completions_that_stop_are_teacher_forced(tiny):
    """Kills: dropping the "keep only completions that end with a stop token" filter (the reference skips the
    others). Every completion starts with <|im_end|>; half the prompts do not stop on it, so they run to the
    token limit and must leave no record."""
    model, tok = tiny("qwen3")
    never = tok.convert_tokens_to_ids("<|endoftext|>")  # a stop id the steered model does not produce
    built = [build_prompt(tok, f"What is {k} + 1?", "qwen-math") for k in range(4)]
    prompts = [p if k % 2 == 0 else replace(p, stop_ids=(never,)) for k, p in enumerate(built)]
    records, kept = token_shifts(model, tok, stop_vector(model, tok), prompts,
                                 ShiftConfig(max_new_tokens=3, temperature=0.05), progress=False)
    assert [r.request.prompt_ids for r in kept] == [built[0].ids, built[2].ids]
    assert all(r.token_ids[-1] in r.request.stop_ids for r in kept)
    assert sorted({x["sequence"] for x in records}) == [0, 1]
    assert len(records) == sum(r.num_tokens + 1 for r in kept)


def test_cli_writes_records_figure_and_case_study(tmp_path, tiny, capsys):
    model, tok = tiny("qwen3")
    vectors = stop_vector(model, tok)
    vectors.metadata.update(model="tiny-random-qwen3", template="qwen-math")
    path = vectors.save(tmp_path / "v.safetensors")
    data = tmp_path / "q.jsonl"
    rows = [{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["analyze", "token-shift", str(path), "--dataset", str(data), "--prompts", "4",
                 "--max-new-tokens", "6", "--temperature", "0.05", "--highlight", "<|im_end|>", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"positions.jsonl", "tokens.csv", "first_position.csv", "top_tokens.png", "top_tokens.pdf",
            "case_study.html", "summary.json"} <= names
    page = (out / "case_study.html").read_text()
    assert "promoted &#x27;&lt;|im_end|&gt;&#x27;" in page
    assert "position 0: '<|im_end|>' 100%" in capsys.readouterr().out
