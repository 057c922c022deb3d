"""Data parallelism for training: one process per rank under ``torchrun`` or ``accelerate launch``.

Each rank owns a contiguous slice of the step's prompt groups, samples and scores them with its own engine
and computes its share of the gradient; gradients are summed with one all-reduce (the vectors are tiny),
so every rank applies the same Adam step and no weights are ever broadcast (docs/semantics.md#optimizer).
Rank 0 logs and writes the run directory. Without the launcher's environment everything here is a no-op on one rank.

Example:
    >>> world = World()  # a plain `python` process: one rank
    >>> world.size, world.is_main, world.shard(8)
    (1, True, range(0, 8))
    >>> World(rank=1, size=2).shard(8)
    range(4, 8)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from rlsteer.errors import RlsteerError

T = TypeVar("T")


class DistributedError(RlsteerError):
    pass


@dataclass(frozen=True)
class World:
    """This process's place among the training ranks."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def shard(self, n: int) -> range:
        """The indices of ``n`` items (prompt groups) this rank owns: a contiguous, equal slice."""
        if n % self.size:
            raise DistributedError(f"{n} prompt groups cannot be split evenly over {self.size} ranks; make "
                                   "rl.prompts_per_step a multiple of the number of processes")
        per = n // self.size
        return range(self.rank * per, (self.rank + 1) * per)

    def device(self, device: str) -> str:
        """The rank's device: ``cuda`` becomes ``cuda:<local rank>`` when several ranks share a node."""
        return f"cuda:{self.local_rank}" if self.enabled and device == "cuda" else device


SINGLE = World()  # the one-process world (immutable)


def init_world(device: str) -> World:
    """Join the process group the launcher described (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``).

    gloo for CPU ranks; NCCL for GPU ranks' CUDA tensors with gloo for their CPU scalars.
    Returns a one-rank world when no launcher is involved.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; install a standard torch wheel")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # GPU ranks: NCCL for the CUDA gradients, gloo beside it for the CPU scalars of all_sum / all_max
        backend = "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local)


def close_world(world: World) -> None:
    if world.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sum_gradients(params: Sequence[torch.Tensor], world: World) -> bool:
    """Sum the gradients of ``params`` over ranks in one all-reduce; True when any rank had a gradient.

    A rank whose samples all had zero advantage contributes zeros. When no rank has a gradient, the grads
    stay ``None`` everywhere, so Adam skips the step on every rank alike (as it does on one rank).
    """
    have = any(p.grad is not None for p in params)
    if not world.enabled:
        return have
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
                     + [torch.tensor([float(have)], device=params[0].device)])  # [Σ numel + 1]
    dist.all_reduce(flat)
    if flat[-1] == 0:
        return False
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return True


def all_sum(value: float, world: World) -> float:
    """A number summed over ranks."""
    if not world.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0])


def all_max(value: float, world: World) -> float:
    """The largest of a number over ranks (e.g. a phase's wall time: the slowest rank sets the pace)."""
    if not world.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0])


def together(fn: Callable[[], T], world: World, errors: type[Exception] | tuple[type[Exception], ...],
             elsewhere: Callable[[int], Exception]) -> T:
    """``fn()`` on every rank, failing on all of them when it raises ``errors`` on any.

    The failing rank raises its own error; the others raise ``elsewhere(rank)`` naming the first failing rank,
    instead of meeting a closed connection (gloo) or waiting (NCCL) in the step's next collective. One
    all-reduce per call.

    Example:
        >>> together(lambda: 3, SINGLE, ValueError, lambda rank: RuntimeError(f"rank {rank} failed"))
        3
    """
    try:
        result, failure = fn(), None
    except errors as err:
        result, failure = None, err
    if world.enabled:  # the lowest failing rank, or none: max over ranks of (size - rank) where it failed
        failed = int(all_max(float(world.size - world.rank) if failure is not None else 0.0, world))
        if failed and failure is None:
            raise elsewhere(world.size - failed)
    if failure is not None:
        raise failure
    return result  # type: ignore[return-value]


def all_gather_rows(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0, in rank order (CPU tensors)."""
    if not world.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def on_main(fn: Callable[[], T], world: World) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result, or raise its error on every rank.

    For work that touches the run directory (creating it, checking a resumed config): a rank-0 error must
    stop the other ranks too instead of leaving them waiting in the next collective.
    """
    if not world.enabled:
        return fn()
    box: list[Any] = [None, None]
    if world.is_main:
        try:
            box[0] = fn()
        except Exception as err:  # any rank-0 failure must reach the other ranks, not strand them
            box[1] = str(err) if isinstance(err, RlsteerError) else f"rank 0 failed: {type(err).__name__}: {err}"
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise DistributedError(box[1])
    return box[0]


def barrier(world: World) -> None:
    if world.enabled:
        dist.barrier()


def checksum(tensors: Sequence[torch.Tensor]) -> str:
    """A sha256 of the tensors' exact bytes (identical vectors ⇔ identical checksums, in practice)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_in_sync(tensors: Sequence[torch.Tensor], world: World, step: int) -> str:
    """Raise unless every rank holds bit-identical ``tensors``; returns the checksum."""
    mine = checksum(tensors)
    if not world.enabled:
        return mine
    sums: list[Any] = [None] * world.size
    dist.all_gather_object(sums, mine)
    if len(set(sums)) != 1:
        raise DistributedError(f"ranks disagree on the vectors after step {step} (checksums {sums}); this is a "
                               "bug: please report it with the config")
    return mine
