"""The FastAPI application: OpenAI's ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``.

Every request is checked before anything is queued (model, fields, context length) and answered with an
OpenAI error object on bad input: 400 for malformed JSON, missing or invalid fields, unsupported
features and prompts over the context length, 404 for an unknown model or path, 405 for a wrong method.
Completions stream as server-sent events (``data: {chunk}`` lines, then ``data: [DONE]``); a client that
disconnects mid-stream cancels its jobs at the next token. A failure inside the engine ends only the
requests it hit (500, or an ``error`` event in a stream). ``/tokenize``, ``/detokenize`` and
``/tokenizer_info`` are vLLM's tokenizer endpoints, which lm-evaluation-harness uses when present.

Example:
    >>> app = create_app(state)  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from rlsteer.serve.catalog import ServedModel
from rlsteer.serve.engine import Engine, Job, Result, Scores, wall_clock
from rlsteer.serve.schemas import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    error_body,
)
from rlsteer.templates import TemplateError, build_chat_prompt, build_prompt, stop_tokens_for


@dataclass
class ServerState:
    """What the handlers share: the engine, the tokenizer and model (for steering), the served models."""

    engine: Engine
    tokenizer: Any
    model: Any
    base: str
    models: Sequence[ServedModel]
    max_model_len: int
    created: int = 0

    def lookup(self, name: str) -> ServedModel:
        for m in self.models:
            if m.name == name:
                return m
        raise APIError(404, f"The model `{name}` does not exist; served models: "
                            f"{', '.join(m.name for m in self.models)} (GET /v1/models)", param="model",
                       code="model_not_found")


def create_app(state: ServerState) -> FastAPI:
    """The application serving ``state``'s models."""
    app = FastAPI(title="rlsteer", description="OpenAI-compatible API over steered models", docs_url=None,
                  redoc_url=None)
    state.created = state.created or wall_clock()

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(err.errors()).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {err.detail}"
        if err.status_code == 404:
            message += "; the API is /v1/models, /v1/completions and /v1/chat/completions"
        return JSONResponse(error_body(message, "invalid_request_error"), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(err).__name__}: {err}", "server_error"),
                            status_code=500)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [m.card(state.base, state.created) for m in state.models]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        return state.lookup(name).card(state.base, state.created)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        served = _check(state, body)
        if (body.logprobs is not None or body.echo) and body.stream:
            raise APIError(400, "logprobs and echo come with the whole completion, not streamed; set stream to "
                                "false", param="stream")
        if body.logprobs is not None and not state.engine.streams:
            raise APIError(400, "logprobs need the HF backend (rlsteer serve --backend hf)", param="logprobs")
        prompts: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        eos = stop_tokens_for(state.tokenizer, "plain")[0]
        if not body.prompts():
            raise APIError(400, "prompt is empty; send a string, a list of strings or a list of token ids",
                           param="prompt")
        for p in body.prompts():
            if isinstance(p, str):
                prompts.append((build_prompt(state.tokenizer, p, "plain").ids, eos))
            else:
                vocab = len(state.tokenizer)
                if any(not 0 <= t < vocab for t in p):
                    raise APIError(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
                prompts.append((tuple(p), eos))
        return await _respond(state, request, served, body, prompts, body.max_tokens, chat=False)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        served = _check(state, body)
        try:
            prompt = build_chat_prompt(state.tokenizer, body.conversation())
        except (TemplateError, ValueError) as err:  # a template that rejects the conversation (role order, …)
            raise APIError(400, f"messages: {err}", param="messages") from None
        return await _respond(state, request, served, body, [(prompt.ids, prompt.stop_ids)], body.limit(),
                              chat=True)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        tokens = state.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": state.max_model_len}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        return {"prompt": state.tokenizer.decode(body.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        tok = state.tokenizer
        return {"eos_token": tok.eos_token, "bos_token": tok.bos_token, "pad_token": tok.pad_token,
                "model_max_length": state.max_model_len}

    return app


def validation_error(errors: Sequence[Any]) -> APIError:
    """One OpenAI-style error from pydantic's list: malformed JSON, a missing field, a bad value."""
    first = dict(errors[0]) if errors else {}
    kind = first.get("type", "")
    where = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(w for w in where if not w.isdigit() and w not in ("str", "list[str]", "list[int]",
                                                                      "list[list[int]]")) or None
    if kind == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request: "
                             f"{first.get('ctx', {}).get('error', 'invalid JSON')}; send a JSON object")
    if kind == "missing":
        return APIError(400, f"you must provide the field {param!r}", param=param)
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "model_attributes_type" or not where:
        return APIError(400, "the request body must be a JSON object")
    return APIError(400, f"invalid value for {param!r}: {first.get('msg', 'invalid')}", param=param)


def _check(state: ServerState, body: CompletionRequest | ChatCompletionRequest) -> ServedModel:
    served = state.lookup(body.model)
    bad = body.unsupported()
    if bad:
        raise APIError(400, f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not supported by rlsteer serve; "
                            "leave it unset", param=bad[0])
    if served.vectors is None and body.steering_scale != 1.0:
        raise APIError(400, f"{served.name} is the base model; steering_scale applies to the steered models",
                       param="steering_scale")
    return served


async def _respond(state: ServerState, request: Request, served: ServedModel,
                   body: CompletionRequest | ChatCompletionRequest,
                   prompts: list[tuple[tuple[int, ...], tuple[int, ...]]], max_tokens: int | None, *,
                   chat: bool) -> JSONResponse | StreamingResponse:
    """Check the lengths, queue one job per prompt and choice, answer whole or as a stream."""
    if max_tokens is not None and max_tokens < 1:
        raise APIError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
    limit = state.max_model_len
    for ids, _ in prompts:
        if not ids:
            raise APIError(400, "the prompt is empty", param="messages" if chat else "prompt")
        wanted = len(ids) + (max_tokens or 1)
        if wanted > limit:
            asked = f"{len(ids)} in the prompt" + (f", {max_tokens} in the completion" if max_tokens else "")
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                                f"{wanted} tokens ({asked}). Please reduce the length of the prompt or completion.",
                           param="messages" if chat else "prompt", code="context_length_exceeded")
    steering = served.steering(body.steering_scale, state.model)
    seed = body.seed if body.seed is not None else secrets.randbits(62)
    jobs = [Job(steering=steering, prompt_ids=ids, stop_ids=stops,
                max_tokens=max_tokens if max_tokens is not None else limit - len(ids),
                temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, seed=seed + k,
                stop_strings=tuple(body.stop or ()), group=(served.name, body.steering_scale),
                logprobs=getattr(body, "logprobs", None), echo=getattr(body, "echo", False), index=p * body.n + k)
            for p, (ids, stops) in enumerate(prompts) for k in range(body.n)]
    events: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()
    for job in jobs:
        state.engine.submit(job, events)
    usage_prompt = sum(len(ids) for ids, _ in prompts)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    head = {"id": rid, "created": wall_clock(), "model": served.name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(jobs, events, head, chat, usage_prompt, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    watcher = asyncio.create_task(_cancel_on_disconnect(request, jobs))
    try:
        results = await _collect(jobs, events)
    finally:  # a client that left (or a cancelled handler) stops its jobs
        watcher.cancel()
        for job in jobs:
            job.cancel()
    failed = [r for r in results if r.finish_reason == "error"]
    if failed:
        raise APIError(500, f"generation failed: {failed[0].text}", kind="server_error")
    choices = [_choice(i, r, chat, state.tokenizer, jobs[i]) for i, r in enumerate(results)]
    completion_tokens = sum(r.completion_tokens for r in results)
    return JSONResponse({**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                         "usage": _usage(usage_prompt, completion_tokens)})


async def _cancel_on_disconnect(request: Request, jobs: list[Job], every_s: float = 0.25) -> None:
    """Cancel ``jobs`` once the client of a non-streamed request has gone (a stream notices by itself)."""
    while not await request.is_disconnected():
        await asyncio.sleep(every_s)
    for job in jobs:
        job.cancel()


async def _collect(jobs: list[Job], events: asyncio.Queue[tuple[int, str, Any]]) -> list[Result]:
    results: dict[int, Result] = {}
    errors: dict[int, str] = {}
    while len(results) < len(jobs):
        index, kind, value = await events.get()
        if kind == "end":
            results[index] = value
        elif kind == "error":
            errors[index] = value
    return [Result(errors[i], "error", 0, ()) if i in errors else results[i] for i in sorted(results)]


async def _stream(jobs: list[Job], events: asyncio.Queue[tuple[int, str, Any]], head: dict[str, Any], chat: bool,
                  usage_prompt: int, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: a chunk per text delta and per finished choice, then usage (if asked) and [DONE]."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    done = 0
    completion_tokens = 0
    try:
        if chat:
            for job in jobs:
                yield _event({**head, "object": kind, "choices": [
                    {"index": job.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}]})
        while done < len(jobs):
            index, what, value = await events.get()
            if what == "text":
                delta = {"delta": {"content": value}} if chat else {"text": value}
                yield _event({**head, "object": kind, "choices": [
                    {"index": index, **delta, "logprobs": None, "finish_reason": None}]})
            elif what == "error":
                yield _event(error_body(f"generation failed: {value}", "server_error"))
            elif what == "end":
                done += 1
                result: Result = value
                completion_tokens += result.completion_tokens
                if result.finish_reason in ("stop", "length"):
                    delta = {"delta": {}} if chat else {"text": ""}
                    yield _event({**head, "object": kind, "choices": [
                        {"index": index, **delta, "logprobs": None, "finish_reason": result.finish_reason}]})
        if include_usage:
            yield _event({**head, "object": kind, "choices": [], "usage": _usage(usage_prompt, completion_tokens)})
        yield "data: [DONE]\n\n"
    finally:  # the client left (the response task was cancelled) or the stream ended: stop what still decodes
        for job in jobs:
            job.cancel()


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _choice(index: int, result: Result, chat: bool, tokenizer: Any, job: Job) -> dict[str, Any]:
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                "finish_reason": result.finish_reason}
    prompt = str(tokenizer.decode(list(job.prompt_ids), skip_special_tokens=True)) if job.echo else ""
    logprobs = _logprobs(result.scores, tokenizer, 0 if job.echo else len(prompt)) if result.scores else None
    return {"index": index, "text": prompt + result.text, "logprobs": logprobs, "finish_reason": result.finish_reason}


def _logprobs(scores: Scores, tokenizer: Any, offset: int) -> dict[str, Any]:
    """OpenAI's completion ``logprobs``: tokens as text, their log-probs, the best alternatives, text offsets."""
    def text(token: int) -> str:
        return str(tokenizer.decode([token]))

    tokens = [text(t) for t in scores.token_ids]
    offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=offset))
    top = [None if alts is None else {text(t): lp for t, lp in alts} for alts in scores.top]
    return {"tokens": tokens, "token_logprobs": list(scores.logprobs), "top_logprobs": top, "text_offset": offsets}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
