"""Logit lens: scores against a hand computation, Table-8 records, stats, the CLI writing its figures."""

from __future__ import annotations

import json

import torch

from rlsteer.analysis.lens import lens_scores, logit_lens, vector_stats
from rlsteer.cli import main
from rlsteer.steering import SteeringVectors
from rlsteer.steering.sites import Entry


def trained_like(d: int, layers: list[int], seed: int = 0) -> SteeringVectors:
    vectors = SteeringVectors(d, layers=layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for e in vectors.entries:
            vectors.parameter(e).copy_(torch.randn(d, generator=g))
    return vectors


def test_lens_matches_a_hand_computation(tiny):
    model, tok = tiny("llama")
    vectors = trained_like(64, [1, 3])
    records = logit_lens(vectors, model, tok, k=5)
    w = model.lm_head.weight.detach()
    for entry in vectors.entries:
        s = vectors.vector(entry).detach()
        by_hand = [(float(w[v] @ s / (w[v].norm() * s.norm())), float(w[v] @ s)) for v in range(w.shape[0])]
        best = sorted(c for c, _ in by_hand)[::-1][:5]  # ids may swap between near-equal cosines
        rows = [r for r in records if r["entry"] == entry.name]
        assert all(abs(r["cos"] - b) < 1e-6 for r, b in zip(rows, best, strict=True))
        assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
        for r in rows:
            assert abs(r["cos"] - by_hand[r["token_id"]][0]) < 1e-5 and abs(r["dot"] - by_hand[r["token_id"]][1]) < 1e-4
            assert r["token"] == tok.decode([r["token_id"]])


def test_final_norm_option_normalises_the_vector_first(tiny):
    model, tok = tiny("llama")
    s = torch.randn(64)
    with torch.no_grad():
        model.model.norm.weight.copy_(torch.linspace(0.1, 2.0, 64))  # a non-trivial final norm
    vectors = SteeringVectors.from_dict({("resid_post", 3): s})
    plain = logit_lens(vectors, model, tok, k=3)
    normed = logit_lens(vectors, model, tok, k=3, final_norm=True)
    cos, _ = lens_scores(model.model.norm(s.view(1, 1, -1)).view(-1), model.lm_head.weight)
    assert [r["token_id"] for r in normed] == torch.topk(cos, 3).indices.tolist()
    assert [r["token_id"] for r in normed] != [r["token_id"] for r in plain]


def test_stats_are_symmetric_with_unit_diagonal_and_stable_rank_bounds():
    stats = vector_stats(trained_like(16, [0, 1, 2, 3]))
    c = torch.tensor(stats["cosines"])
    assert torch.allclose(c, c.T) and torch.allclose(c.diag(), torch.ones(4))
    assert 1.0 <= stats["stable_rank"] <= 4.0
    same = SteeringVectors.from_dict({("resid_post", i): torch.ones(8) * (i + 1) for i in range(3)})
    assert abs(vector_stats(same)["stable_rank"] - 1.0) < 1e-6  # parallel vectors: rank one


def test_cli_writes_records_table_and_figures(tmp_path, capsys):
    vectors = trained_like(64, [0, 1, 2, 3])
    vectors.metadata["model"] = "tiny-random-llama"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name: tiny-random-llama\n")
    path = vectors.save(run / "vectors.safetensors")
    assert main(["analyze", "lens", str(path), "--k", "4"]) == 0
    out = run / "analysis" / "lens"
    assert {p.name for p in out.iterdir()} >= {"lens.jsonl", "lens.csv", "lens.md", "stats.json",
                                              "lens_histograms.png", "lens_histograms.pdf",
                                              "norms_and_cosines.png", "norms_and_cosines.pdf"}
    rows = [json.loads(line) for line in (out / "lens.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 4 and {r["entry"] for r in rows} == {f"resid_post.{i}" for i in range(4)}
    assert (out / "lens_histograms.png").read_bytes()[:4] == b"\x89PNG"
    assert "**resid_post.3**" in capsys.readouterr().out  # the last layer's table is printed
    assert Entry.parse(rows[0]["entry"]).site == "resid_post"
