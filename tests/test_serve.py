"""rlsteer serve with real clients on loopback: the openai package, raw HTTP for bad input, concurrent clients.

One server (tiny random Llama, a random vector served as "steer") on 127.0.0.1 and a free port for the
module; it stops when the module ends. Every request loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="rlsteer serve needs the serve extra")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from rlsteer.generate import GenerateConfig, generate  # noqa: E402
from rlsteer.rollout import HFBackend, Request, SamplingParams  # noqa: E402
from rlsteer.serve import ServeConfig, ServerThread, build_state  # noqa: E402
from rlsteer.steering import SteeringVectors  # noqa: E402
from rlsteer.steering.hooks import steer  # noqa: E402
from rlsteer.templates import build_prompt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-random-llama"
CONTEXT = 2048
TIMEOUT = 120.0  # seconds any single client call may take (the machine may be loaded)


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory) -> Path:
    """A random resid_post vector strong enough to change the tiny model's greedy output."""
    gen = torch.Generator().manual_seed(1)
    path = tmp_path_factory.mktemp("vectors") / "vectors.safetensors"
    SteeringVectors.from_dict({2: torch.randn(64, generator=gen) * 6}).save(path, model=MODEL, template="chat")
    return path


@pytest.fixture(scope="module")
def server(vector_file):
    state = build_state(ServeConfig(targets=(f"steer={vector_file}",), max_model_len=CONTEXT, batch_size=32))
    with ServerThread(state) as url:
        yield url, state


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key="unused", timeout=TIMEOUT, max_retries=0)


def direct(state, prompt_ids, stop_ids, vectors, max_tokens, *, temperature=0.0, seed=0):
    """The backend called directly (no server): the reference the HTTP answers must equal."""
    backend = HFBackend(state.model, state.tokenizer, progress=False)
    sampling = SamplingParams(temperature=temperature, max_new_tokens=max_tokens)
    rollout = backend.generate([Request(tuple(prompt_ids), tuple(stop_ids), seed=seed)], vectors, sampling)[0]
    ids = rollout.token_ids[:-1] if rollout.finish_reason == "stop" else rollout.token_ids
    return state.tokenizer.decode(list(ids), skip_special_tokens=True)


# ------------------------------------------------------------------------------------------ openai client


def test_models_lists_the_base_model_and_each_vector(client, vector_file):
    models = {m.id: m for m in client.models.list().data}
    assert list(models) == [MODEL, "steer"]
    assert client.models.retrieve("steer").model_extra["rlsteer"]["vectors"] == str(vector_file)


def test_completion_is_the_steered_backends_greedy_output(client, server, vector_file):
    """Kills: the served model not steered, steered at the wrong scale, or a base request steered."""
    url, state = server
    prompt = build_prompt(state.tokenizer, "The sum of 12 and 30 is", "plain")
    vectors = SteeringVectors.load(vector_file, state.model)
    steered = client.completions.create(model="steer", prompt="The sum of 12 and 30 is", max_tokens=8, temperature=0)
    base = client.completions.create(model=MODEL, prompt="The sum of 12 and 30 is", max_tokens=8, temperature=0)
    half = client.completions.create(model="steer", prompt="The sum of 12 and 30 is", max_tokens=8, temperature=0,
                                     extra_body={"steering_scale": 0.5})
    assert steered.choices[0].text == direct(state, prompt.ids, prompt.stop_ids, vectors, 8)
    assert base.choices[0].text == direct(state, prompt.ids, prompt.stop_ids, None, 8)
    assert half.choices[0].text == direct(state, prompt.ids, prompt.stop_ids, vectors * 0.5, 8)
    assert len({steered.choices[0].text, base.choices[0].text, half.choices[0].text}) == 3
    assert steered.usage.prompt_tokens == len(prompt.ids) and steered.usage.completion_tokens == 8
    assert steered.choices[0].finish_reason == "length"


def test_chat_over_http_equals_rlsteer_generate(client, vector_file):
    """The issue's parity: greedy chat output of the served vector == ``rlsteer generate --template chat``, per
    scale. Kills: another chat rendering than generate's, a scale applied twice or not at all."""
    question = "What is 2 + 3?"
    rows = generate(GenerateConfig(target=str(vector_file), prompts=(question,), scales=(1.0, 2.0), template="chat",
                                   max_new_tokens=10))[0].completions
    for row in rows:
        model = MODEL if row.scale is None else "steer"
        extra = {} if row.scale is None else {"steering_scale": row.scale}
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                               max_tokens=10, temperature=0, extra_body=extra)
        assert reply.choices[0].message.content == row.text.removesuffix("<|im_end|>"), row.label


def test_streaming_gives_the_same_text_as_one_answer(client):
    """Kills: chunks lost, repeated or sent out of order; a missing finish chunk or usage."""
    whole = client.completions.create(model="steer", prompt="Once upon a time", max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model="steer", prompt="Once upon a time", max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # it did stream
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12

    messages = [{"role": "user", "content": "Tell me a story."}]
    whole = client.chat.completions.create(model="steer", messages=messages, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="steer", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_strings_end_the_text_before_them(client):
    """Kills: a stop string left in the text, or streamed before the server knew it was one."""
    whole = client.completions.create(model=MODEL, prompt="Count: one two", max_tokens=12, temperature=0)
    text = whole.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop and text.find(stop) > 0
    cut = client.completions.create(model=MODEL, prompt="Count: one two", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[:text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model=MODEL, prompt="Count: one two", max_tokens=12, temperature=0,
                                              stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text[:text.find(stop)]


def test_echo_and_logprobs_are_the_steered_models_own_log_probs(client, server, vector_file):
    """What lm-eval's loglikelihood requests send (prompt token ids, echo, logprobs=1, max_tokens=1). Kills: the
    scoring pass unsteered or at another scale, positions shifted by one, the prompt's first token scored, a
    temperature applied to log-probs, alternatives that are not the best or not equal to the chosen token's."""
    url, state = server
    ids = state.tokenizer.encode("The sum of 12 and 30 is 42", add_special_tokens=False)
    vectors = SteeringVectors.load(vector_file, state.model)
    for model, scale, steering in (("steer", 1.0, vectors), ("steer", 0.5, vectors * 0.5), (MODEL, 1.0, None)):
        extra = {"steering_scale": scale} if model == "steer" else {}
        out = client.completions.create(model=model, prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=1,
                                        extra_body=extra).choices[0]
        lp = out.logprobs
        assert len(lp.tokens) == len(ids) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        with torch.no_grad(), (steer(state.model, steering) if steering is not None else contextlib.nullcontext()):
            expected = state.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)  # [T, vocab]
        want = [expected[i - 1, ids[i]].item() for i in range(1, len(ids))]
        assert lp.token_logprobs[1:len(ids)] == pytest.approx(want, abs=1e-4)
        greedy = int(expected[-1].argmax())  # the generated token is the greedy one, scored exactly as its best
        assert lp.token_logprobs[-1] == max(lp.top_logprobs[-1].values())
        assert lp.tokens[-1] == state.tokenizer.decode([greedy])
        assert all(len(top) == 1 and max(top.values()) >= chosen - 1e-6
                   for top, chosen in zip(lp.top_logprobs[1:], lp.token_logprobs[1:], strict=True))
        assert out.text.startswith(state.tokenizer.decode(ids))
        assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    plain = client.completions.create(model="steer", prompt="The sum of", max_tokens=3, temperature=0, logprobs=3)
    lp = plain.choices[0].logprobs
    assert len(lp.tokens) == 3 and None not in lp.token_logprobs and all(len(t) == 3 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == plain.choices[0].text  # no echo: the completion's tokens only


def test_a_backend_failure_still_answers_a_job_that_waited_for_its_log_probs():
    """A job that ended (and waits for its log-probs) before the backend failed on the rest of its batch gets an
    error and its end, rather than a client waiting forever."""
    from rlsteer.models import load_model
    from rlsteer.serve.engine import Engine, Job

    model, tok = load_model(MODEL)

    class FailsMidBatch(HFBackend):
        def generate(self, requests, vectors, sampling, on_token=None):
            calls = iter(range(10**6))

            def token(i, t):
                if next(calls) >= 3:  # step 1: both rows (the short job ends); step 2: row 1; then a failure
                    raise RuntimeError("device lost")
                return on_token(i, t)
            return super().generate(requests, vectors, sampling, on_token=token)

    engine = Engine(FailsMidBatch(model, tok, progress=False), tok)
    ids = tuple(tok.encode("1 + 1 ="))
    jobs = [Job(steering=None, prompt_ids=ids, stop_ids=(), max_tokens=1, temperature=0.0, logprobs=1, index=0),
            Job(steering=None, prompt_ids=ids, stop_ids=(), max_tokens=8, temperature=0.0, index=1)]

    async def answers():
        events = asyncio.Queue()
        for job in jobs:
            engine.submit(job, events)
        seen = []
        while sum(kind == "end" for _, kind, _ in seen) < len(jobs):
            seen.append(await asyncio.wait_for(events.get(), 60))
        return seen

    try:
        seen = asyncio.run(answers())
    finally:
        engine.close()
    assert {(index, kind) for index, kind, _ in seen} >= {(0, "error"), (0, "end"), (1, "error"), (1, "end")}
    assert engine.batches[-1] == 2  # the two jobs shared the failing batch


def test_several_prompts_and_choices_come_back_in_order(client, server):
    """lm-eval sends batches of token-id prompts; n asks for several samples of each. Kills: choices shuffled."""
    url, state = server
    ids = [state.tokenizer.encode(t) for t in ("Hello there", "The capital of France is")]
    batch = client.completions.create(model="steer", prompt=ids, max_tokens=5, temperature=0)
    singles = [client.completions.create(model="steer", prompt=i, max_tokens=5, temperature=0) for i in ids]
    assert [c.index for c in batch.choices] == [0, 1]
    assert [c.text for c in batch.choices] == [s.choices[0].text for s in singles]
    sampled = client.completions.create(model="steer", prompt="Hi", max_tokens=6, temperature=1.0, n=3, seed=5)
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    again = client.completions.create(model="steer", prompt="Hi", max_tokens=6, temperature=1.0, seed=6)
    assert sampled.choices[1].text == again.choices[0].text  # choice k samples with seed + k


def test_tokenizer_endpoints(server):
    url, state = server
    root = url.removesuffix("/v1")
    tokens = httpx.post(f"{root}/tokenize", json={"prompt": "hello world", "add_special_tokens": False}).json()
    assert tokens["tokens"] == state.tokenizer.encode("hello world", add_special_tokens=False)
    assert httpx.post(f"{root}/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"] == "hello world"
    assert httpx.get(f"{root}/tokenizer_info").json()["eos_token"] == state.tokenizer.eos_token


# ------------------------------------------------------------------------------------------ bad input

LONG = "word " * (CONTEXT + 10)
BAD = [  # (what, path, body, status, error code or param)
    ("malformed JSON", "/completions", '{"model": "steer", "prompt": ', 400, None),
    ("not an object", "/completions", "[1, 2]", 400, None),
    ("unknown model", "/completions", {"model": "nope", "prompt": "x"}, 404, "model_not_found"),
    ("missing model", "/completions", {"prompt": "x"}, 400, "model"),
    ("missing prompt", "/completions", {"model": "steer"}, 400, "prompt"),
    ("missing messages", "/chat/completions", {"model": "steer"}, 400, "messages"),
    ("empty messages", "/chat/completions", {"model": "steer", "messages": []}, 400, "messages"),
    ("empty prompt list", "/completions", {"model": "steer", "prompt": []}, 400, "prompt"),
    ("prompt over the context", "/completions", {"model": "steer", "prompt": LONG}, 400, "context_length_exceeded"),
    ("chat over the context", "/chat/completions",
     {"model": "steer", "messages": [{"role": "user", "content": LONG}]}, 400, "context_length_exceeded"),
    ("completion over the context", "/completions", {"model": "steer", "prompt": "x", "max_tokens": CONTEXT}, 400,
     "context_length_exceeded"),
    ("negative max_tokens", "/completions", {"model": "steer", "prompt": "x", "max_tokens": -5}, 400, "max_tokens"),
    ("zero max_tokens", "/chat/completions",
     {"model": "steer", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
    ("temperature too high", "/completions", {"model": "steer", "prompt": "x", "temperature": 5}, 400, "temperature"),
    ("wrong type", "/completions", {"model": "steer", "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ("unknown field", "/completions", {"model": "steer", "prompt": "x", "max_tokenz": 3}, 400, "max_tokenz"),
    ("streamed logprobs", "/completions", {"model": "steer", "prompt": "x", "logprobs": 1, "stream": True}, 400,
     "stream"),
    ("too many logprobs", "/completions", {"model": "steer", "prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ("chat logprobs", "/chat/completions",
     {"model": "steer", "messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400, "logprobs"),
    ("token id out of range", "/completions", {"model": "steer", "prompt": [10**9]}, 400, "prompt"),
    ("bad role", "/chat/completions", {"model": "steer", "messages": [{"role": "robot", "content": "x"}]}, 400,
     "messages"),
    ("scale on the base model", "/completions", {"model": MODEL, "prompt": "x", "steering_scale": 2}, 400,
     "steering_scale"),
    ("unknown path", "/embeddings", {"model": "steer", "input": "x"}, 404, None),
]


@pytest.mark.parametrize("what,path,body,status,code", BAD, ids=[row[0] for row in BAD])
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(server, what, path, body, status, code):
    url, _ = server
    content = body if isinstance(body, str) else json.dumps(body)
    reply = httpx.post(url + path, content=content, headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert code in (error["code"], str(error["param"]).split(".")[0]), error
    ok = httpx.post(url + "/completions", json={"model": "steer", "prompt": "x", "max_tokens": 2}, timeout=TIMEOUT)
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


def test_wrong_method_is_405(server):
    reply = httpx.get(server[0] + "/completions", timeout=TIMEOUT)
    assert reply.status_code == 405 and reply.json()["error"]["message"]


def test_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(model="steer", messages=[{"role": "user", "content": LONG}])


@pytest.mark.parametrize("stream", [True, False], ids=["mid-stream", "waiting"])
def test_a_client_that_disconnects_stops_its_decoding(server, stream):
    """Kills: a request whose client left decoding on to max_tokens (or hanging the engine)."""
    url, state = server
    before = {job_id for job_id, *_ in state.engine.finished}
    body = {"model": "steer", "prompt": "x", "max_tokens": CONTEXT - 10, "stream": stream}
    if stream:
        with httpx.stream("POST", url + "/completions", timeout=TIMEOUT, json=body) as reply:
            assert reply.status_code == 200
            for line in reply.iter_lines():
                if line.startswith("data: {"):
                    break  # one chunk, then hang up
    else:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up before the answer is ready
            httpx.post(url + "/completions", json=body, timeout=httpx.Timeout(TIMEOUT, read=1.0))
    deadline = time.monotonic() + 60
    new = []
    while not new and time.monotonic() < deadline:
        new = [row for row in state.engine.finished if row[0] not in before]
        time.sleep(0.05)
    assert new and new[0][1] == "cancelled" and new[0][2] < CONTEXT - 10, new
    ok = httpx.post(url + "/completions", json={"model": "steer", "prompt": "x", "max_tokens": 2}, timeout=TIMEOUT)
    assert ok.status_code == 200


# ------------------------------------------------------------------------------------------ load


def test_concurrent_clients_get_their_own_outputs_and_share_batches(server):
    """32 concurrent clients (distinct prompts, seeds, lengths, sampled) get exactly what each gets alone.

    Sampling with per-request seeds makes every answer distinct and, unlike greedy decoding on a random
    model, insensitive to the float rounding of batching. Kills: answers swapped between clients, rows of a
    batch mixed, requests lost, and a server that decodes one request at a time (batch sizes stay 1).
    """
    url, state = server
    bodies = [{"model": "steer" if k % 2 else MODEL, "prompt": f"Request number {k}: the answer is", "seed": 1000 + k,
               "max_tokens": 4 + k % 5, "temperature": 1.0} for k in range(32)]

    async def run(concurrent: bool) -> list[dict]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
            if concurrent:
                replies = await asyncio.gather(*(http.post("/completions", json=b) for b in bodies))
            else:
                replies = [await http.post("/completions", json=b) for b in bodies]
        assert all(r.status_code == 200 for r in replies)
        return [r.json() for r in replies]

    alone = asyncio.run(run(False))
    batched_before = len(state.engine.batches)
    together = asyncio.run(run(True))
    assert [r["choices"][0]["text"] for r in together] == [r["choices"][0]["text"] for r in alone]
    assert [r["usage"] for r in together] == [r["usage"] for r in alone]
    assert len({r["choices"][0]["text"] for r in together}) == 32
    assert max(list(state.engine.batches)[batched_before:]) > 1


# ------------------------------------------------------------------------------------------ the command


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_rlsteer_serve_command_starts_answers_and_stops_on_a_signal(vector_file, tmp_path, stop):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rlsteer.cli", "serve", str(vector_file), "--port", "0",
                             "--max-model-len", "256"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    try:
        url = None
        deadline = time.monotonic() + 180
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            if line.startswith("listening on "):
                url = line.split()[2]
        assert url, proc.stderr.read() if proc.poll() is not None else "no address printed"
        names = [m["id"] for m in httpx.get(f"{url}/models", timeout=TIMEOUT).json()["data"]]
        assert names == [MODEL, vector_file.parent.name]
        reply = httpx.post(f"{url}/completions", json={"model": names[1], "prompt": "x", "max_tokens": 3},
                           timeout=TIMEOUT)
        assert reply.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.send_signal(stop)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert proc.stderr.read().strip().splitlines()[-1] == f"rlsteer serve: stopped by {stop.name}"


def test_rlsteer_serve_bad_targets_are_one_line(tmp_path, vector_file, capsys):
    from rlsteer.cli import main

    assert main(["serve", str(tmp_path / "missing.safetensors"), "--port", "0"]) == 2
    assert main(["serve", f"a={vector_file}", f"a={vector_file}", "--port", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("rlsteer: error: ") for line in lines)
    assert "neither a vector file nor a run directory" in lines[0] and "NAME=" in lines[1]
