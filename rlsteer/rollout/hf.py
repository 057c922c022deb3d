"""The transformers rollout backend: batched, left-padded decoding with a KV cache and steering active.

It is the reference for correctness (docs/semantics.md#rollouts): an explicit decode loop, so that every request has its
own seed and stop tokens, returns the sampled tokens' log-probs, and works with any steering site or patch.

Example:
    >>> from rlsteer import load_model
    >>> model, tok = load_model("tiny-random-llama")
    >>> backend = HFBackend(model, tok, batch_size=8, progress=False)
    >>> req = Request(tuple(tok.encode("1 + 1 =")), stop_ids=(tok.eos_token_id,), seed=0)
    >>> [r.finish_reason for r in backend.generate([req], None, SamplingParams(max_new_tokens=4))]
    ['length']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rlsteer.batching import left_pad, new_cache, positions
from rlsteer.rollout.base import FinishReason, Request, Rollout, SamplingParams
from rlsteer.rollout.sampling import next_tokens
from rlsteer.steering.hooks import steer

#: ``on_token(request_index, token_id)`` after each sampled token; "stop" or "length" ends that request there
TokenCallback = Callable[[int, int], FinishReason | None]


class HFBackend:
    """Sample completions with a transformers model.

    Args:
        model: a frozen ``*ForCausalLM`` (from :func:`rlsteer.load_model`).
        tokenizer: its tokenizer (for the pad id and decoding).
        batch_size: rows decoded together; bounds memory (requests are processed in chunks of this size,
            longest prompts first to limit padding).
        progress: show a progress bar over requests (None: only when stderr is a terminal).
        share_prompts: prefill each distinct prompt of a batch once and give its rows copies of its KV cache
            (the N samples of an RLOO group share one prompt); off prefills every row.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, batch_size: int = 32, progress: bool | None = True,
                 share_prompts: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.share_prompts = share_prompts
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, requests: Sequence[Request], vectors: object | None,
                 sampling: SamplingParams, *, on_token: TokenCallback | None = None) -> list[Rollout]:
        """Sample one completion per request, in request order, with ``vectors`` steering the model.

        ``on_token`` (a server streaming tokens) sees every sampled token as it is drawn, with the index of
        its request in ``requests``; returning ``"stop"`` or ``"length"`` ends that request with this reason
        (a stop string, the request's own token limit, a client that left). A request whose prompt leaves no
        room under ``sampling.max_total_tokens`` gets an empty completion without ever being prefilled, so the
        padding of a chunk is bounded by that budget.
        """
        empty = [i for i, r in enumerate(requests) if sampling.budget(r.prompt_len) == 0]
        results: dict[int, Rollout] = {i: Rollout(requests[i], (), "", "length", () if sampling.logprobs else None)
                                       for i in empty}
        order = sorted((i for i in range(len(requests)) if i not in results), key=lambda i: -requests[i].prompt_len)
        bar = tqdm(total=len(requests), desc="generate", unit="seq", leave=False,
                   disable=None if self.progress is None else not self.progress)
        context = steer(self.model, vectors) if vectors is not None else nullcontext()  # type: ignore[arg-type]
        with context, torch.no_grad(), bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                rows = self._generate_chunk([requests[i] for i in chunk], sampling,
                                            None if on_token is None else _indexed(on_token, chunk))
                for i, rollout in zip(chunk, rows, strict=True):
                    results[i] = rollout
                bar.update(len(chunk))
            bar.update(len(empty))
        return [results[i] for i in range(len(requests))]

    def close(self) -> None:
        """Nothing to free: the model belongs to the caller."""

    def _generate_chunk(self, requests: list[Request], sampling: SamplingParams,
                        on_token: TokenCallback | None = None) -> list[Rollout]:
        device = self.device
        rows = len(requests)
        ids, mask = left_pad([r.prompt_ids for r in requests], self.pad_id, device)  # [rows, prompt]
        budgets = [sampling.budget(r.prompt_len) for r in requests]
        stops = [set(r.stop_ids) for r in requests]
        generators = [torch.Generator(device=device).manual_seed(r.seed) for r in requests]
        tokens: list[list[int]] = [[] for _ in requests]
        logprobs: list[list[float]] = [[] for _ in requests]
        done = [b == 0 for b in budgets]
        stopped = [False] * rows

        position_ids = positions(mask)
        cache = new_cache(self.model)
        # prefill each distinct prompt once (an RLOO group's N requests share one), then give every row its cache
        first_row: dict[Any, int] = {}
        for i, r in enumerate(requests):
            first_row.setdefault(r.prompt_ids if self.share_prompts else i, i)
        slot = {p: k for k, p in enumerate(first_row)}
        unique = torch.tensor(list(first_row.values()), device=device)  # [U]: a row of each distinct prompt
        rows_of = torch.tensor([slot[r.prompt_ids if self.share_prompts else i] for i, r in enumerate(requests)],
                               device=device)  # [rows] → its prompt's slot
        out = self.model(input_ids=ids[unique], attention_mask=mask[unique], position_ids=position_ids[unique],
                         past_key_values=cache, use_cache=True, logits_to_keep=1)  # only the last position's logits
        logits = out.logits[:, -1][rows_of]  # [rows, vocab]
        if len(unique) < rows:
            cache.reorder_cache(rows_of)
        while not all(done):
            step_tokens, step_logprobs = next_tokens(logits, sampling, generators)
            for i in range(rows):
                if done[i]:
                    continue
                token = int(step_tokens[i])
                tokens[i].append(token)
                logprobs[i].append(float(step_logprobs[i]))
                stopped[i] = token in stops[i]
                done[i] = stopped[i] or len(tokens[i]) >= budgets[i]
                ended = on_token(i, token) if on_token is not None else None
                if ended is not None and not done[i]:
                    stopped[i], done[i] = ended == "stop", True
            if all(done):
                break
            feed = torch.where(torch.tensor(done, device=device), self.pad_id, step_tokens)[:, None]  # [rows, 1]
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
            position_ids = position_ids[:, -1:] + 1
            logits = self.model(input_ids=feed, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                                use_cache=True).logits[:, -1]
        return [
            Rollout(request=r, token_ids=tuple(tokens[i]),
                    text=self.tokenizer.decode(tokens[i], skip_special_tokens=False),
                    finish_reason="stop" if stopped[i] else "length",
                    logprobs=tuple(logprobs[i]) if sampling.logprobs else None)
            for i, r in enumerate(requests)
        ]


def _indexed(on_token: TokenCallback, indices: Sequence[int]) -> TokenCallback:
    """``on_token`` for a chunk: its row numbers mapped back to request indices."""
    return lambda row, token: on_token(indices[row], token)
