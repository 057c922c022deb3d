"""rlsteer generate: base and steered rows per prompt, scales, templates, prefixes, patches, prompt files."""

from __future__ import annotations

import json

import pytest
import torch

from rlsteer.cli import main
from rlsteer.generate import GenerateConfig, generate, read_prompts
from rlsteer.models import load_model
from rlsteer.rollout import HFBackend, Request, SamplingParams
from rlsteer.steering import SteeringVectors, patch
from rlsteer.templates import build_prompt

MODEL = "tiny-random-llama"


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory):
    gen = torch.Generator().manual_seed(3)
    path = tmp_path_factory.mktemp("gen") / "v.safetensors"
    SteeringVectors.from_dict({2: torch.randn(64, generator=gen) * 6}).save(path, model=MODEL, template="chat",
                                                                           prefix="To")
    return path


def test_rows_are_base_then_each_scale_from_the_same_prompt(vector_file):
    """Kills: the scale ignored (×0 ≠ base), the base row steered, another template/prefix than the vectors'."""
    cfg = GenerateConfig(target=str(vector_file), prompts=("What is 2 + 3?", "Name a colour."), scales=(0.0, 1.0),
                         max_new_tokens=6)
    comparisons = generate(cfg)
    model, tok = load_model(MODEL)
    backend = HFBackend(model, tok, progress=False)
    sampling = SamplingParams(temperature=0.0, max_new_tokens=6)
    for c, question in zip(comparisons, cfg.prompts, strict=True):
        prompt = build_prompt(tok, question, "chat", "To")  # the vectors' template and prefix
        assert c.rendered == prompt.text
        request = [Request(prompt.ids, prompt.stop_ids, seed=0)]
        base = backend.generate(request, None, sampling)[0].text
        steered = backend.generate(request, SteeringVectors.load(vector_file, model), sampling)[0].text
        assert [r.label for r in c.completions] == ["base", "×0", "×1"]
        assert [r.text for r in c.completions] == [base, base, steered]
        assert base != steered


def test_sampled_rows_share_the_seed(vector_file):
    """With temperature > 0 the base row and the ×0 row draw the same tokens (same prompt, same seed)."""
    rows = generate(GenerateConfig(target=str(vector_file), prompts=("Hi",), scales=(0.0,), temperature=1.0,
                                   max_new_tokens=8, seed=11))[0].completions
    again = generate(GenerateConfig(target=str(vector_file), prompts=("Hi",), scales=(0.0,), temperature=1.0,
                                    max_new_tokens=8, seed=12))[0].completions
    assert rows[0].text == rows[1].text != again[0].text


def test_patch_rows_match_rlsteer_patch(tmp_path):
    """--patch steer_v --layer 1 --head 0 moves the layer-1 vector into block 2's KV head 0, as rlsteer.patch does."""
    gen = torch.Generator().manual_seed(4)
    vectors = {1: torch.randn(64, generator=gen) * 8, 2: torch.randn(64, generator=gen)}
    file = tmp_path / "two.safetensors"
    SteeringVectors.from_dict(vectors).save(file, model=MODEL, template="plain")
    rows = generate(GenerateConfig(target=str(file), prompts=("One two three",), patch="steer_v", patch_layer=1,
                                   patch_head=0, max_new_tokens=5))[0].completions
    model, tok = load_model(MODEL)
    prompt = build_prompt(tok, "One two three", "plain")
    with patch(model, vectors[1], layer=2, variant="steer_v", heads=0):
        expected = HFBackend(model, tok, progress=False).generate(
            [Request(prompt.ids, prompt.stop_ids)], None, SamplingParams(temperature=0.0, max_new_tokens=5))[0].text
    assert rows[1].text == expected != rows[0].text


def test_cli_text_json_and_prompt_file(vector_file, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is 4 + 4?"}\n\n{"problem": "What is 1 + 1?"}\n')
    assert main(["generate", str(vector_file), "Hello", "--prompts-file", str(prompts), "--scale", "0.5", "2",
                 "--prefix", "", "--max-new-tokens", "4", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [p["prompt"] for p in record["prompts"]] == ["Hello", "What is 4 + 4?", "What is 1 + 1?"]
    assert [r["label"] for r in record["prompts"][0]["completions"]] == ["base", "×0.5", "×2"]
    assert not record["prompts"][0]["rendered"].endswith("To")  # --prefix "" forces none
    assert record["sampling"]["greedy"] is True
    assert main(["generate", str(vector_file), "Hello", "--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("── 1. Hello\nbase │ ") and "\n×1   │ " in text


@pytest.mark.parametrize("argv,needle", [
    (["generate", "{file}"], "no prompts"),
    (["generate", "{tmp}/missing.safetensors", "x"], "neither a vector file nor a run directory"),
    (["generate", "{file}", "x", "--temperature", "-1"], "temperature must be >= 0"),
    (["generate", "{file}", "x", "--template", "nope"], "unknown template"),
    (["generate", "{file}", "x", "--patch", "steer_v"], "needs a head"),
    (["generate", "{file}", "--prompts-file", "{tmp}/none.txt"], "cannot read prompts file"),
])
def test_bad_input_is_one_line(vector_file, tmp_path, capsys, argv, needle):
    args = [a.format(file=vector_file, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlsteer: error: ") and needle in lines[0], lines


def test_read_prompts_names_the_bad_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": 1}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2 has no \"prompt\" or \"problem\""):
        read_prompts(bad)
