"""Running the engine on several processes (torch.distributed, e.g. DDP through Lightning or
Accelerate): one calibration set for all ranks, Fisher traces reduced across ranks, each rank
evaluating its share of every generation, and rank 0's plan and masks made everyone's.

Everything here is a no-op in a single process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled; for small things and token ids)."""
    rank, size = world()
    if size == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardedEvaluate:
    """Wraps a batch fitness function: rank r scores individuals r, r + W, r + 2W, ...; the
    scores are gathered so every rank returns the full list (and so evolves identically)."""

    def __init__(self, evaluate: Callable[[Sequence[Sequence[int]]], list[float]], split: bool = True):
        """``split=False``: every rank scores every individual (an FSDP-sharded model, whose
        forward passes need all ranks in step)."""
        self.evaluate = evaluate
        self.split = split
        self.evaluated_here = 0

    def __call__(self, individuals: Sequence[Sequence[int]]) -> list[float]:
        rank, size = world() if self.split else (0, 1)
        mine = list(individuals[rank::size])
        scores = self.evaluate(mine) if mine else []
        self.evaluated_here += len(mine)
        if size == 1:
            return scores
        gathered: list[Any] = [None] * size
        dist.all_gather_object(gathered, scores)
        out = [0.0] * len(individuals)
        for r, part in enumerate(gathered):
            out[r::size] = part
        return out


def reduce_traces(traces: Sequence[float], count: int) -> list[float]:
    """Average per-rank Fisher traces, each over ``count`` samples, into the all-rank average."""
    rank, size = world()
    if size == 1:
        return list(traces)
    total = torch.tensor([t * count for t in traces] + [float(count)], dtype=torch.float64)
    dist.all_reduce(total)
    return (total[:-1] / total[-1]).tolist()


@torch.no_grad()
def broadcast_masks(model: nn.Module) -> None:
    """Copy rank 0's N:M masks, and the weights it pruned with them (SparseGPT also updates the
    kept weights), to every rank."""
    from .nm import mask_of, masked_modules, stored_weight

    rank, size = world()
    if size == 1:
        return
    for _, module in masked_modules(model):
        mask = mask_of(module)
        as_bytes = mask.to(torch.uint8)
        dist.broadcast(as_bytes, src=0)
        mask.copy_(as_bytes.bool())
        dist.broadcast(stored_weight(module).data, src=0)


def shard(rows: Tensor) -> Tensor:
    """This rank's share of the rows (at least one row)."""
    rank, size = world()
    part = rows[rank::size]
    return part if part.shape[0] else rows[:1]
