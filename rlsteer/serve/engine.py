"""The decoding engine behind the server: one thread that batches whatever requests are waiting.

HTTP handlers (on the event loop) :meth:`Engine.submit` a :class:`Job` and read its events from an
``asyncio.Queue``; the engine thread takes every job that is waiting, groups those that can share a batch
(same model, steering scale and sampling settings) and decodes each group with one ``backend.generate``
call. The HF backend reports every sampled token (``on_token``), so text streams as it is produced and a
job can end early: its own ``max_tokens``, a stop string, or a client that left. Backends without token
callbacks (vLLM, which schedules the batch itself) deliver each completion whole, cut the same way.

Example:
    >>> from rlsteer.models import load_model
    >>> from rlsteer.rollout import HFBackend
    >>> model, tok = load_model("tiny-random-llama")
    >>> engine = Engine(HFBackend(model, tok, progress=False), tok)
    >>> job = Job(steering=None, prompt_ids=tuple(tok.encode("1 + 1 =")), stop_ids=(tok.eos_token_id,),
    ...           max_tokens=3, temperature=0.0)
    >>> engine.run_now([job])
    >>> job.result.finish_reason, job.result.completion_tokens
    ('length', 3)
    >>> engine.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rlsteer.rollout import HFBackend, Request, SamplingParams

Finish = Literal["stop", "length", "cancelled", "error"]
_ids = itertools.count()


@dataclass
class Result:
    """A finished job: its text (stop strings and the stop token removed) and why it ended."""

    text: str
    finish_reason: Finish
    completion_tokens: int
    token_ids: tuple[int, ...]
    scores: Scores | None = None  # log-probs, when the job asked for them


@dataclass(frozen=True)
class Scores:
    """Per-token log-probs of a finished job under its steering (OpenAI's completion ``logprobs``).

    ``token_ids`` are the prompt's (with ``echo``) then the completion's; the first prompt token has no
    log-prob (None) and no alternatives. ``top`` holds up to ``logprobs`` (token id, log-prob) pairs per token,
    best first; the token's own log-prob is exact where it is the best (lm-eval's greedy check compares them).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float | None, ...]
    top: tuple[tuple[tuple[int, float], ...] | None, ...]


@dataclass(eq=False)
class Job:
    """One completion to produce.

    Attributes:
        steering: what the backend applies (a :class:`SteeringVectors`, a patch dict, or None).
        group: jobs with equal groups and sampling settings may share a batch (the served model and scale).
        stop_strings: the text ends before the first of these.
        events: where the engine sends ``("text", delta)`` and finally ``("end", Result)`` (set by submit).
    """

    steering: Any
    prompt_ids: tuple[int, ...]
    stop_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int = 0
    stop_strings: tuple[str, ...] = ()
    logprobs: int | None = None  # alternatives per token (0: the token's own only); None: no log-probs
    echo: bool = False  # the prompt's tokens are scored too
    group: Hashable = None
    index: int = 0
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)
    result: Result | None = None
    tokens: list[int] = field(default_factory=list)
    _sent: int = 0  # characters of text already sent
    _events: Any = None
    _loop: asyncio.AbstractEventLoop | None = None

    def key(self) -> tuple[Any, ...]:
        return (self.group, self.temperature, self.top_p, self.top_k)

    def cancel(self) -> None:
        """Stop decoding this job at the next token (a client that disconnected)."""
        self.cancelled.set()


class Engine:
    """Decode jobs in a background thread, batching those that wait together.

    Args:
        backend: an HF or vLLM rollout backend (``generate(requests, steering, sampling)``).
        tokenizer: decodes the completions.
        max_batch: jobs per ``generate`` call at most.
        gather_s: after the first job arrives at an idle engine, wait this long for others to share its batch
            (clients that send "at the same time" reach the server a few milliseconds apart).
    """

    def __init__(self, backend: Any, tokenizer: Any, *, max_batch: int = 64, gather_s: float = 0.01) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.streams = isinstance(backend, HFBackend)
        self.batches: deque[int] = deque(maxlen=10_000)  # sizes of the batches decoded, for tests and stats
        self.finished: deque[tuple[int, Finish, int]] = deque(maxlen=10_000)  # (job id, finish, tokens)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._scoring: list[Job] = []  # finished jobs whose log-probs are computed once their batch is done
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="rlsteer-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job, events: asyncio.Queue[tuple[int, str, Any]]) -> None:
        """Queue ``job``; its events arrive in ``events`` (of the running event loop) as (index, kind, value)."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        job._events, job._loop = events, asyncio.get_running_loop()
        self._queue.put(job)

    def run_now(self, jobs: Sequence[Job]) -> None:
        """Decode ``jobs`` in the calling thread (no event loop, no streaming): for scripts and doctests."""
        for group in _groups(list(jobs), self.max_batch):
            self._decode(group)

    def close(self) -> None:
        """Finish the batch in progress, end the jobs still waiting as cancelled, stop the thread."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=60)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._end(job, "cancelled")

    # ------------------------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        while not self._closed:
            first = self._queue.get()
            if first is None:
                return
            waiting = [first]
            deadline = time.monotonic() + self.gather_s
            while len(waiting) < self.max_batch:  # what arrived while the last batch decoded, or arrives now
                remaining = deadline - time.monotonic()
                try:
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._closed = True
                    break
                waiting.append(job)
            for group in _groups(waiting, self.max_batch):
                self._decode(group)

    def _decode(self, jobs: list[Job]) -> None:
        live = [j for j in jobs if not j.cancelled.is_set()]
        for job in jobs:
            if job.cancelled.is_set():
                self._end(job, "cancelled")
        if not live:
            return
        self.batches.append(len(live))
        first = live[0]
        sampling = SamplingParams(temperature=first.temperature, top_p=first.top_p, top_k=first.top_k,
                                  max_new_tokens=max(j.max_tokens for j in live))
        requests = [Request(j.prompt_ids, j.stop_ids, seed=j.seed) for j in live]
        try:
            if self.streams:
                self.backend.generate(requests, first.steering, sampling,
                                      on_token=lambda i, token: self._on_token(live[i], token))
            else:
                for job, rollout in zip(live, self.backend.generate(requests, first.steering, sampling), strict=True):
                    for token in rollout.token_ids:
                        if self._on_token(job, token) is not None:
                            break
        except Exception as err:  # a backend failure ends its jobs with an error; the engine keeps serving
            message = f"{type(err).__name__}: {err}"
            for job in live:
                if job.result is None:
                    self._send(job, "error", message)
                    self._end(job, "error")
                elif job in self._scoring:  # ended before the failure, its log-probs never computed
                    self._send(job, "error", message)
                    self._send(job, "end", job.result)
            self._scoring.clear()
            return
        for job in live:
            if job.result is None:  # the backend ended it: a stop token or the length budget
                self._end(job, "stop" if job.tokens and job.tokens[-1] in job.stop_ids else "length")
        self._score_finished()

    def _score_finished(self) -> None:
        """Log-probs of the jobs that asked for them, after their batch (its steering hooks are gone by now)."""
        pending, self._scoring = self._scoring, []
        for job in pending:
            assert job.result is not None
            try:
                job.result.scores = score_tokens(self.backend.model, job.steering, job)
            except Exception as err:  # reported like a failed generation
                self._send(job, "error", f"{type(err).__name__}: {err}")
            self._send(job, "end", job.result)

    def _on_token(self, job: Job, token: int) -> Literal["stop", "length"] | None:
        """Record a sampled token, send the text that is certain, and say whether the job is over."""
        if job.result is not None:
            return "stop"
        if job.cancelled.is_set():
            self._end(job, "cancelled")
            return "stop"
        job.tokens.append(token)
        if token in job.stop_ids:
            self._end(job, "stop")
            return "stop"
        text = self._text(job)
        cut = min((i for i in (text.find(s) for s in job.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            self._end(job, "stop", text[:cut])
            return "stop"
        if len(job.tokens) >= job.max_tokens:
            self._end(job, "length", text)
            return "length"
        # hold back an incomplete character and any tail that may still become a stop string
        safe = len(text.rstrip("\ufffd"))
        for s in job.stop_strings:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    safe = min(safe, len(text) - k)
                    break
        if safe > job._sent:
            self._send(job, "text", text[job._sent:safe])
            job._sent = safe
        return None

    def _text(self, job: Job) -> str:
        ids = job.tokens[:-1] if job.tokens and job.tokens[-1] in job.stop_ids else job.tokens
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _end(self, job: Job, finish: Finish, text: str | None = None) -> None:
        if job.result is not None:
            return
        text = self._text(job) if text is None else text
        if finish in ("stop", "length") and len(text) > job._sent:
            self._send(job, "text", text[job._sent:])
            job._sent = len(text)
        job.result = Result(text, finish, len(job.tokens), tuple(job.tokens))
        self.finished.append((job.id, finish, len(job.tokens)))
        if job.logprobs is not None and finish in ("stop", "length"):
            self._scoring.append(job)  # sent by _score_finished
            return
        self._send(job, "end", job.result)

    def _send(self, job: Job, kind: str, value: Any) -> None:
        if job._loop is not None and job._events is not None and not job._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (server shutting down)
                job._loop.call_soon_threadsafe(job._events.put_nowait, (job.index, kind, value))


def score_tokens(model: Any, steering: Any, job: Job) -> Scores:
    """One teacher-forced pass over the job's prompt and completion under ``steering``: each token's log-prob
    under the model (temperature 1, no top-p/top-k: the model's own distribution) and its best alternatives."""
    import torch

    from rlsteer.steering.hooks import steer

    completion = job.tokens[:-1] if job.tokens and job.tokens[-1] in job.stop_ids else job.tokens
    ids = [*job.prompt_ids, *completion]
    first = 1 if job.echo else len(job.prompt_ids)  # the first scored position
    device = next(model.parameters()).device
    with torch.no_grad(), steer(model, steering) if steering is not None else contextlib.nullcontext():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, first - 1:-1]  # [T, vocab]
    logp = logits.float().log_softmax(-1)  # [T, vocab]
    chosen = logp.gather(-1, torch.tensor(ids[first:], device=device)[:, None])[:, 0].tolist()  # [T]
    k = job.logprobs or 0
    values, indices = logp.topk(max(k, 1), dim=-1)  # [T, k]
    top = [tuple(zip(i[:k], v[:k], strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
    lead: tuple[None, ...] = (None,) if job.echo else ()
    return Scores(tuple(ids[first - len(lead):]), (*lead, *chosen), (*lead, *top))


def _groups(jobs: list[Job], size: int) -> list[list[Job]]:
    """Jobs that can share a batch, in order of their first arrival, at most ``size`` each."""
    by_key: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        by_key.setdefault(job.key(), []).append(job)
    return [group[i:i + size] for group in by_key.values() for i in range(0, len(group), size)]


def wall_clock() -> int:
    """Seconds since the epoch, as OpenAI's ``created`` fields."""
    return int(time.time())
