"""What every rollout backend takes and returns.

A backend turns tokenised requests into completions sampled from the (steered) model:

    backend.generate(requests, vectors, sampling) -> list[Rollout]

Requests carry their own stop tokens and seed, so a request's completion does not depend on which other
requests share its batch or on how the work is chunked.

Example:
    >>> SamplingParams(temperature=0.0).greedy
    True
    >>> Request(prompt_ids=(1, 2, 3), stop_ids=(2,), seed=7).prompt_len
    3
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from rlsteer.errors import RlsteerError

FinishReason = Literal["stop", "length"]


class SamplingError(RlsteerError):
    pass


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.

    Attributes:
        temperature: softmax temperature; 0 means greedy.
        top_p: nucleus mass kept (1.0 = off).
        top_k: keep the k most likely tokens (0 or -1 = off).
        max_new_tokens: generated tokens per request at most.
        max_total_tokens: prompt + completion at most (None = no limit); the tighter limit wins.
        logprobs: also return each sampled token's log-probability under softmax(logits / T), the
            untruncated policy that the RL loss differentiates (log_softmax(logits) when greedy).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 512
    max_total_tokens: int | None = None
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_total_tokens is not None and self.max_total_tokens < 2:
            raise SamplingError(f"max_total_tokens must be >= 2, got {self.max_total_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def budget(self, prompt_len: int) -> int:
        """New tokens allowed for a prompt of ``prompt_len`` tokens (0 when the prompt alone is too long)."""
        limit = self.max_new_tokens
        if self.max_total_tokens is not None:
            limit = min(limit, self.max_total_tokens - prompt_len)
        return max(limit, 0)


@dataclass(frozen=True)
class Request:
    """One completion to sample: prompt token ids, the ids that end it, and its own seed."""

    prompt_ids: tuple[int, ...]
    stop_ids: tuple[int, ...]
    seed: int = 0

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


@dataclass(frozen=True)
class Rollout:
    """A sampled completion. ``token_ids`` include the stop token when one was produced."""

    request: Request
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    logprobs: tuple[float, ...] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class Backend(Protocol):
    """A rollout backend (HF transformers, vLLM, …); :func:`rlsteer.rollout.factory.make_backend` builds one.

    ``generate`` samples one completion per request, in request order, with ``steering`` applied (a
    :class:`rlsteer.SteeringVectors`, an ``{Entry: tensor}`` dict such as a circuit patch, or None);
    ``close`` frees what the backend holds (an engine, its memory) and is safe to call twice.
    """

    def generate(self, requests: Sequence[Request], steering: object | None,
                 sampling: SamplingParams) -> list[Rollout]: ...

    def close(self) -> None: ...
