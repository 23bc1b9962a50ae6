"""Models sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``): every rank keeps its shard.

Each decoder block (and the root) is an FSDP module: a rank holds 1/W of every weight, rows along
dim 0. The block walk (`block_walk.walk_blocks`) gathers one block whole for its turn with
``unshard()`` and hands the shards back with ``reshard()``; a stage that changed weights (pruning)
writes each rank's rows of the new weights into its own shard. Forward passes (perplexity,
fitness) gather blocks through FSDP's own hooks. Every rank therefore runs the same computation
on the same data in step (FSDP's gathers are collective): the search's population is not split
across ranks here, as it is under DDP, and plans agree without a broadcast. The fitness runs the
blocks one by one and reshards each after its forward (`settle`), so no rank ever holds more than
one gathered block, whichever ran first: an ordinary forward (FSDP's root initialised with the
real blocks) or the block walk (the root initialised with stand-ins in their place).

Pruning a sharded model writes zeros into the shards but installs no mask parametrizations (FSDP
manages the weights' attributes itself); `saving.restore_masks` reads the masks back from the
zeros of the saved, gathered model. Fisher traces are refused (not built yet).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def _fsdp_module_type() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return None
    return FSDPModule


def is_sharded(model: nn.Module) -> bool:
    """Whether any part of ``model`` is an FSDP2 module."""
    kind = _fsdp_module_type()
    return kind is not None and any(isinstance(m, kind) for m in model.modules())


def local(tensor: Tensor) -> Tensor:
    """This rank's part of ``tensor`` (itself when it is not a DTensor)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def local_rows(full: Tensor, like: Tensor) -> Tensor:
    """This rank's rows of ``full`` as ``like`` (a sharded DTensor of the same shape) holds them."""
    if not hasattr(like, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements).to_local()


def settle(block: nn.Module) -> None:
    """Make sure an FSDP ``block`` holds its shards (a forward called outside the root's may
    leave it gathered), so writes go to this rank's rows; nothing for other modules."""
    kind = _fsdp_module_type()
    if kind is not None and isinstance(block, kind):
        block.reshard()


class ShardedBlocks:
    """The block-holding interface of `offload.DiskOffload` for an FSDP2 model."""

    def __init__(self, blocks: nn.ModuleList):
        kind = _fsdp_module_type()
        missing = [i for i, b in enumerate(blocks) if kind is None or not isinstance(b, kind)]
        if missing:
            raise ValueError(f"decoder blocks {missing[:5]} are not FSDP modules: call fully_shard on every decoder "
                             "block (then on the model), as the FSDP2 docs do")

    @contextmanager
    def onloaded(self, block: nn.Module, write_back: bool = False) -> Iterator[nn.Module]:
        """Gather ``block`` whole for the duration, also across its forwards (FSDP would
        otherwise reshard it after each, mid-visit, when its root was initialised with the real
        blocks); with ``write_back`` each rank then writes its rows of the (changed) weights into
        its shard. Afterwards the block reshards after every forward, as an FSDP block under its
        root should: when the root initialised while the blocks were stood in for (the block
        walk's first forward), each block became its own root, which never reshards by itself."""
        block.set_reshard_after_forward(False)
        block.unshard()
        try:
            yield block
        finally:
            full = {name: p.detach().clone() for name, p in block.named_parameters()} if write_back else {}
            block.set_reshard_after_forward(True)
            block.reshard()
            with torch.no_grad():
                for name, p in block.named_parameters():
                    if name in full:
                        local(p).copy_(local_rows(full[name], p))

    def prefetch(self, block: nn.Module) -> None:
        """Nothing to do: FSDP gathers a block's shards when it is onloaded (the offload holder
        copies the next block ahead instead)."""


def sharding_of(model: nn.Module) -> ShardedBlocks | None:
    """A `ShardedBlocks` for an FSDP2 model, else None."""
    if not is_sharded(model):
        return None
    from .models import find_blocks

    return ShardedBlocks(find_blocks(model))
