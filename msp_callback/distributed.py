"""Running the engine on several processes (torch.distributed, e.g. DDP through Lightning or
Accelerate): one calibration set for all ranks, Fisher traces reduced across ranks, each rank
evaluating its share of every generation, and rank 0's plan and masks made everyone's.

Every tensor a collective receives is on the device its backend serves (`collective_device`): the
CPU under gloo, the rank's GPU under NCCL (which takes CUDA tensors only). Everything here is a
no-op in a single process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _backend_device_types() -> list[str]:
    """Device types the default group's backend takes tensors on ("cpu:gloo,cuda:nccl" style
    names list theirs; a single backend's come from torch's capability table)."""
    name = str(dist.get_backend()).lower()
    if ":" in name:
        return [pair.split(":")[0] for pair in name.split(",")]
    return list(dist.Backend.backend_capability.get(name, ["cpu", "cuda"]))


def collective_device(like: torch.device | None = None) -> torch.device:
    """Where a tensor collective's input must be: the CPU when the backend serves it (gloo);
    else ``like`` (this rank's model device) when the backend serves its type; else the
    backend's device type at the current index (NCCL: ``cuda:<torch.cuda.current_device()>``)."""
    types = _backend_device_types()
    if "cpu" in types:
        return torch.device("cpu")
    if like is not None and like.type in types:
        return like if like.index is not None else torch.device(like.type, getattr(torch, like.type).current_device())
    return torch.device(types[0], getattr(torch, types[0]).current_device())


def broadcast(obj: T, device: torch.device | None = None) -> T:
    """Rank 0's ``obj`` on every rank (pickled; for small things and token ids). ``device``: this
    rank's model device, for the backend's staging tensors (see `collective_device`)."""
    rank, size = world()
    if size == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0, device=collective_device(device))
    return box[0]


def _broadcast_(tensor: Tensor, device: torch.device) -> None:
    """Overwrite ``tensor`` with rank 0's, travelling on ``device`` (a copy when it lives elsewhere)."""
    if tensor.device == device:
        dist.broadcast(tensor, src=0)
        return
    moved = tensor.to(device)
    dist.broadcast(moved, src=0)
    tensor.copy_(moved)


class ShardedEvaluate:
    """Wraps a batch fitness function: rank r scores individuals r, r + W, r + 2W, ...; the
    scores are gathered so every rank returns the full list (and so evolves identically)."""

    def __init__(self, evaluate: Callable[[Sequence[Sequence[int]]], list[float]], split: bool = True,
                 device: torch.device | None = None):
        """``split=False``: every rank scores every individual (an FSDP-sharded model, whose
        forward passes need all ranks in step). ``device``: the model's, for the gather."""
        self.evaluate = evaluate
        self.split = split
        self.device = device
        self.evaluated_here = 0

    def __call__(self, individuals: Sequence[Sequence[int]]) -> list[float]:
        rank, size = world() if self.split else (0, 1)
        mine = list(individuals[rank::size])
        scores = self.evaluate(mine) if mine else []
        self.evaluated_here += len(mine)
        if size == 1:
            return scores
        counts = [len(individuals[r::size]) for r in range(size)]
        padded = torch.tensor(scores + [float("nan")] * (max(counts) - len(scores)), dtype=torch.float64,
                              device=collective_device(self.device))
        gathered = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(gathered, padded)
        out = [0.0] * len(individuals)
        for r, part in enumerate(gathered):
            out[r::size] = part[: counts[r]].tolist()
        return out


def reduce_traces(traces: Sequence[float], count: int, device: torch.device | None = None) -> list[float]:
    """Average per-rank Fisher traces, each over ``count`` samples, into the all-rank average
    (``device``: the model's, see `collective_device`)."""
    rank, size = world()
    if size == 1:
        return list(traces)
    total = torch.tensor([t * count for t in traces] + [float(count)], dtype=torch.float64,
                         device=collective_device(device))
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
        device = collective_device(mask.device)
        as_bytes = mask.to(device=device, dtype=torch.uint8)
        dist.broadcast(as_bytes, src=0)
        mask.copy_(as_bytes.bool())
        _broadcast_(stored_weight(module).data, device)


@torch.no_grad()
def broadcast_parameters(module: nn.Module) -> None:
    """Copy rank 0's parameters of ``module`` to every rank (after training that each rank ran
    on the same data: GPU backward kernels are not bit-deterministic, so the replicas drift)."""
    if world()[1] == 1:
        return
    for parameter in module.parameters():
        _broadcast_(parameter.data, collective_device(parameter.device))


def keep_masks_out_of_buffer_sync(root: nn.Module) -> int:
    """Tell DDP (``DistributedDataParallel(root, broadcast_buffers=True)``, its default) not to
    broadcast the N:M mask buffers at every forward of training: one byte per block weight each
    step, while masks only change when pruning, which broadcasts them itself (`broadcast_masks`).
    Call before ``root`` is wrapped; returns how many buffers are left out."""
    from .nm import NMMask

    masks = [f"{name}.mask" for name, module in root.named_modules() if isinstance(module, NMMask)]
    ignored = list(getattr(root, "_ddp_params_and_buffers_to_ignore", []))
    root._ddp_params_and_buffers_to_ignore = ignored + [name for name in masks if name not in ignored]
    return len(masks)


def shard(rows: Tensor) -> Tensor:
    """This rank's share of the rows (at least one row)."""
    rank, size = world()
    part = rows[rank::size]
    return part if part.shape[0] else rows[:1]
