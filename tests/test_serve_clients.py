"""lm-evaluation-harness against rlsteer serve (slow: SmolLM2, and lm-eval itself is heavy).

``pip install 'rlsteer[serve,lmeval]'`` (``make test-clients``). A four-problem generate_until task made
here (lm-eval reads it from a local JSONL, offline) runs through lm-eval's ``local-completions`` and
``local-chat-completions`` models, exactly as a user runs them from the shell; their recorded responses
must be the server's own greedy answers, which in turn are ``rlsteer generate``'s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="rlsteer serve needs the serve extra")
pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'rlsteer[lmeval]')")
openai = pytest.importorskip("openai")

from rlsteer.generate import GenerateConfig, generate  # noqa: E402
from rlsteer.serve import ServeConfig, ServerThread, build_state  # noqa: E402
from rlsteer.steering import SteeringVectors  # noqa: E402

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
PROBLEMS = [("What is 3 + 4?", "7"), ("What is 2 + 2?", "4"), ("What is 5 + 1?", "6"), ("What is 8 + 1?", "9")]
TASK = """\
task: rlsteer_sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{problem}}}}\\nAnswer:"
doc_to_target: " {{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


CHOICE_TASK = """\
task: rlsteer_sums_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{problem}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("clients")
    gen = torch.Generator().manual_seed(0)
    file = root / "vectors.safetensors"
    # a mild all-layer vector: SmolLM2 still answers, but differently from the base model
    SteeringVectors.from_dict({layer: torch.randn(576, generator=gen) * 0.6 for layer in range(30)}).save(
        file, model=MODEL, template="plain")
    state = build_state(ServeConfig(targets=(f"steer={file}",), batch_size=8))
    with ServerThread(state) as url:
        yield url, file, root


def run_lm_eval(root: Path, url: str, model: str, endpoint: str, *extra: str) -> list[dict]:
    data = root / "sums.jsonl"
    data.write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in PROBLEMS))
    tasks = root / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "rlsteer_sums.yaml").write_text(TASK.format(data=data))
    out = root / f"out-{model}-{endpoint.replace('/', '_')}"
    kind = "local-chat-completions" if "chat" in endpoint else "local-completions"
    cmd = [sys.executable, "-m", "lm_eval", "--model", kind, "--model_args",
           f"model={model},base_url={url}/{endpoint},num_concurrent=4,max_retries=1,timeout=300",
           "--tasks", "rlsteer_sums", "--include_path", str(tasks), "--output_path", str(out), "--log_samples", *extra]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "unused"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-4000:]
    samples = sorted(out.rglob("samples_rlsteer_sums_*.jsonl"))
    assert samples, f"no samples in {out}: {done.stdout[-2000:]}"
    records = [json.loads(line) for line in samples[-1].read_text().splitlines()]
    return sorted(records, key=lambda r: r["doc_id"])


@pytest.mark.parametrize("model", ["steer", MODEL])
def test_lm_eval_local_completions_gets_the_servers_greedy_answers(served, model):
    """Kills: token-id prompts decoded wrongly, stop strings ignored, answers sent to the wrong request
    (lm-eval sends 4 at once), and a served model that is not ``rlsteer generate``'s."""
    url, file, root = served
    records = run_lm_eval(root, url, model, "completions")
    client = openai.OpenAI(base_url=url, api_key="unused", timeout=300, max_retries=0)
    prompts = [f"Question: {p}\nAnswer:" for p, _ in PROBLEMS]
    answers = [client.completions.create(model=model, prompt=p, max_tokens=12, temperature=0, stop=["\n"])
               .choices[0].text for p in prompts]
    assert [r["resps"][0][0] for r in records] == answers
    rows = generate(GenerateConfig(target=str(file), prompts=tuple(prompts), template="plain", max_new_tokens=12))
    index = 1 if model == "steer" else 0
    texts = [c.completions[index].text.split("\n")[0] for c in rows]
    assert [t.removesuffix("<|im_end|>").removesuffix("<|endoftext|>") for t in texts] == answers
    assert all("exact_match" in r for r in records)


def test_lm_eval_local_chat_completions_gets_the_servers_greedy_answers(served):
    url, file, root = served
    records = run_lm_eval(root, url, "steer", "chat/completions", "--apply_chat_template")
    client = openai.OpenAI(base_url=url, api_key="unused", timeout=300, max_retries=0)
    answers = [client.chat.completions.create(model="steer", temperature=0, max_tokens=12, stop=["\n"],
                                              messages=[{"role": "user", "content": f"Question: {p}\nAnswer:"}])
               .choices[0].message.content for p, _ in PROBLEMS]
    assert [r["resps"][0][0] for r in records] == answers
    assert any(answers)


def test_lm_eval_multiple_choice_scores_with_the_steered_models_log_probs(served):
    """lm-eval's loglikelihood requests (echo + logprobs over token ids) against the served vector. Kills:
    log-probs of the unsteered model, of the wrong positions, or a greedy flag that disagrees with them."""
    from rlsteer.models import load_model
    from rlsteer.steering.hooks import steer

    url, file, root = served
    data = root / "choices.jsonl"
    rows = [{"problem": p, "choices": [a, str(int(a) + 1), "0"], "label": 0} for p, a in PROBLEMS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = root / "choice-tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "rlsteer_sums_choice.yaml").write_text(CHOICE_TASK.format(data=data))
    out = root / "out-choice"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
           f"model=steer,base_url={url}/completions,num_concurrent=4,max_retries=1,timeout=300",
           "--tasks", "rlsteer_sums_choice", "--include_path", str(tasks), "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "unused"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-4000:]
    records = sorted((json.loads(line) for line in sorted(out.rglob("samples_rlsteer_sums_choice_*.jsonl"))[-1]
                      .read_text().splitlines()), key=lambda r: r["doc_id"])
    model, tok = load_model(MODEL)
    vectors = SteeringVectors.load(file, model)
    for record, row in zip(records, rows, strict=True):
        context = tok.encode(f"Question: {row['problem']}\nAnswer:", add_special_tokens=False)
        for (logprob, greedy), choice in zip([r[0] for r in record["resps"]], row["choices"], strict=True):
            whole = tok.encode(f"Question: {row['problem']}\nAnswer: {choice}", add_special_tokens=False)
            with torch.no_grad(), steer(model, vectors):
                logp = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)  # [T, vocab]
            positions = range(len(context), len(whole))
            # (the samples log writes them as strings)
            assert float(logprob) == pytest.approx(sum(logp[t - 1, whole[t]].item() for t in positions), abs=1e-3)
            assert greedy == str(all(int(logp[t - 1].argmax()) == whole[t] for t in positions))
