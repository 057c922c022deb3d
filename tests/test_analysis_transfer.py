"""Transfer: the paper's normalised gain, shape checks, the donor × recipient matrix on two tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlsteer.analysis.transfer import Party, TransferError, check_compatible, normalised_gain
from rlsteer.cli import main
from rlsteer.samples import read_samples
from rlsteer.steering import SteeringVectors
from tests.test_evaluate import toy_benchmark


def test_normalised_gain_reproduces_paper_table_9():
    # Qwen2.5-7B Base: 12.04 alone, 36.44 with its own vector, 30.0 with the Math model's (paper Table 9 → 0.74)
    assert round(normalised_gain(transfer=30.0, base=12.04, own=36.44), 2) == 0.74
    assert normalised_gain(transfer=36.44, base=12.04, own=36.44) == 1.0
    assert normalised_gain(transfer=12.04, base=12.04, own=36.44) == 0.0
    assert math.isnan(normalised_gain(transfer=1.0, base=2.0, own=2.0))


def save(tmp_path, name: str, model: str, d: int = 64, layers=(0, 1, 2, 3), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vectors = SteeringVectors.from_dict({("resid_post", i): 3 * torch.randn(d, generator=g) for i in layers})
    vectors.metadata.update(model=model, template="qwen-math", n_layers="4")
    return vectors.save(tmp_path / f"{name}.safetensors")


def test_shapes_must_match(tmp_path):
    a = Party.parse(str(save(tmp_path, "a", "tiny-random-llama")))
    b = Party.parse(str(save(tmp_path, "b", "other", d=32)))
    with pytest.raises(TransferError, match="one depth and width; got tiny-random-llama: 4 layers × d=64, other"):
        check_compatible([a, b])
    assert Party.parse(f"tiny-random-qwen3={save(tmp_path, 'c', 'x')}").model == "tiny-random-qwen3"


def test_cli_builds_the_matrix_on_two_tiny_models(tmp_path, capsys):
    llama = save(tmp_path, "llama", "tiny-random-llama", seed=0)
    mistral = save(tmp_path, "mistral", "tiny-random-mistral", seed=1)
    out = tmp_path / "transfer"
    assert main(["analyze", "transfer", str(llama), str(mistral), "--benchmarks",
                 str(toy_benchmark(tmp_path / "toy.jsonl", 2)), "--seeds", "0", "--out", str(out),
                 "protocol.max_new_tokens=3", "protocol.temperature=0", "reward.workers=0"]) == 0
    rows = [json.loads(line) for line in (out / "transfer.jsonl").read_text().splitlines()]
    assert [(r["recipient"], r["donor"]) for r in rows] == [
        (r, d) for r in ("tiny-random-llama", "tiny-random-mistral")
        for d in ("—", "tiny-random-llama", "tiny-random-mistral")]
    assert (out / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    # the llama recipient really ran the mistral donor's vector: its completions differ from its own vector's
    own = read_samples(out / "tiny-random-llama" / "from-tiny-random-llama" / "samples" / "toy.seed0.jsonl")
    other = read_samples(out / "tiny-random-llama" / "from-tiny-random-mistral" / "samples" / "toy.seed0.jsonl")
    assert [r["completion"] for r in own] != [r["completion"] for r in other]
    protocol = json.loads((out / "tiny-random-mistral" / "base" / "protocol.json").read_text())
    assert protocol["config"]["model"]["name"] == "tiny-random-mistral"
    assert "Normalised gain" in capsys.readouterr().out


def test_each_recipient_keeps_its_own_template_and_protocol(tmp_path):
    """Table 1 evaluates Qwen2.5-7B with a 32K budget beside Qwen2.5-Math-7B with 4K, and both Llama models with
    the R1 template: a recipient's ,template= and ,protocol= reach its evaluations and no one else's."""
    llama = save(tmp_path, "llama", "tiny-random-llama", seed=0)
    mistral = save(tmp_path, "mistral", "tiny-random-mistral", seed=1)
    bench = toy_benchmark(tmp_path / "toy.jsonl", 2)
    own = tmp_path / "long.yaml"
    own.write_text(f"protocol:\n  benchmarks: [{bench}]\n  temperature: 0\n  max_new_tokens: 5\n  "
                   "max_total_tokens: null\n")
    out = tmp_path / "transfer"
    assert main(["analyze", "transfer", str(llama), f"{mistral},template=plain,protocol={own}", "--benchmarks",
                 str(bench), "--seeds", "0", "--out", str(out), "protocol.max_new_tokens=3",
                 "protocol.temperature=0", "reward.workers=0"]) == 0

    def config(recipient, donor):
        return json.loads((out / recipient / donor / "protocol.json").read_text())["config"]

    for donor in ("base", "from-tiny-random-llama"):
        assert config("tiny-random-mistral", donor)["target"]["template"] == "plain"
        assert config("tiny-random-mistral", donor)["protocol"]["max_new_tokens"] == 3  # the override still applies
        assert config("tiny-random-mistral", donor)["protocol"]["max_total_tokens"] is None  # from its own protocol
        common = config("tiny-random-llama", donor.replace("llama", "mistral"))
        assert common["protocol"]["max_total_tokens"] is not None and common["target"]["template"] != "plain"
