"""The level cache: any block at any level in one tensor write, no re-pruning.

Built once from the dense model on the calibration batches (one pass of the shared driver, each
block fed the *dense* outputs of the block before it):

- score-based criteria (magnitude, Wanda): the per-group ranks of every linear's scores, so the
  weight for level L is ``dense * (ranks >= L)``;
- weight-updating criteria (SparseGPT): the pruned weight for every level 1..M-1 of every linear.

Using dense-model inputs for every block is the documented approximation that makes the search
fast; the final plan is then applied with the criterion properly (sequentially) by `pruner.prune`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..block_walk import BlockInputs, collect_input_stats, walk_blocks
from ..criteria import Criterion, get_criterion
from ..models import block_linears, find_blocks, input_device
from ..nm import from_out_in, group_ranks, has_pruning_masks, mask_from_ranks, stored_weight, to_out_in
from ..sharded import local, local_rows, settle
from ..storage import TensorStore

log = logging.getLogger(__name__)


class LevelCache:
    """Dense weights plus what gives each linear's pruned weight at any level 0..M."""

    def __init__(
        self,
        model: nn.Module,
        criterion: str | Criterion,
        m: int,
        calibration: Sequence[Tensor] | None,
        progress: bool = True,
        storage: str = "device",
        working_bytes: int = 0,
    ):
        """``storage``: where the cached tensors live (see `storage.TensorStore`): device, cpu,
        disk, or auto (the first that holds `estimated_bytes` beside the criterion's scratch
        (`scratch_bytes`) and ``working_bytes`` more, e.g. the fitness's logits)."""
        if has_pruning_masks(model):
            raise RuntimeError("build the level cache on the dense model (it carries pruning N:M masks)")
        self.criterion = get_criterion(criterion)
        self.m = m
        self.blocks = find_blocks(model)
        self.linears = [block_linears(b) for b in self.blocks]
        self.store = TensorStore(storage, input_device(model), self.estimated_bytes(self.linears, self.criterion, m),
                                 working=self.scratch_bytes(self.linears, self.criterion, m) + working_bytes)
        # under FSDP each rank caches its own rows only (`_local` of what `_fill` computes whole). The
        # stored weights, never ``mod.weight``: on a masked layer (all-kept masks under DDP) that
        # computes weight * mask, and under enable_grad keeps an autograd graph, for every linear.
        self._like = [{n: stored_weight(mod) for n, mod in lin.items()} for lin in self.linears]
        self.dense = [{n: self.store.put(local(stored_weight(mod))) for n, mod in lin.items()} for lin in self.linears]
        self.ranks: list[dict[str, Tensor]] = [{} for _ in self.blocks]
        self.pruned: list[dict[str, dict[int, Tensor]]] = [{} for _ in self.blocks]
        self.current = [dict.fromkeys(lin, 0) for lin in self.linears]  # level each linear's weight holds now

        needs_inputs = self.criterion.statistic != "none"
        if needs_inputs and not calibration:
            raise ValueError(f"criterion {self.criterion.name!r} needs calibration batches for the level cache")
        walk_blocks(model, calibration, lambda i, block, inputs: self._fill(i, inputs),
                    desc="level cache", progress=progress, needs_inputs=needs_inputs)

    @staticmethod
    def estimated_bytes(linears: list[dict[str, nn.Module]], criterion: Criterion, m: int) -> int:
        """What the cache holds: the dense weights, plus one rank per weight (in the bytes
        `nm.group_ranks` uses) or the pruned weights of levels 1..M-1."""
        weights = [stored_weight(mod) for lin in linears for mod in lin.values()]  # shapes and dtypes only
        dense = sum(w.numel() * w.element_size() for w in weights)
        rank_bytes = 1 if m <= 256 else 2
        extra = sum(w.numel() for w in weights) * rank_bytes if criterion.score_based else dense * (m - 1)
        return dense + extra

    @staticmethod
    def scratch_bytes(linears: list[dict[str, nn.Module]], criterion: Criterion, m: int) -> int:
        """The criterion's peak scratch for one linear while the cache is built (the largest):
        a float32 copy and its scores or ranks; for a Gram-matrix criterion (SparseGPT) also the
        float32 Gram matrix, its float64 Hessian, inverse and factor, and M-1 stacked float32
        copies swept at once with their keep masks."""
        shapes = [stored_weight(mod).shape for lin in linears for mod in lin.values()]
        largest = max((a * b for a, b in shapes), default=0)
        widest = max((max(a, b) for a, b in shapes), default=0)  # the input width, whatever the layout
        if criterion.statistic != "gram":
            return largest * (4 + 4 + 1)
        return widest * widest * (4 + 3 * 8) + largest * (m - 1) * (4 + 1) + largest * 4

    @torch.no_grad()
    def _fill(self, index: int, inputs: BlockInputs | None) -> list[Tensor]:
        """Cache block ``index``; returns its dense outputs (the walk feeds them to the next block)."""
        linears, outputs = self.linears[index], []
        stats = collect_input_stats(self.blocks[index], linears, inputs, self.criterion.statistic, outputs)
        for name, module in linears.items():
            like = self._like[index][name]
            weight = to_out_in(module, stored_weight(module).detach()).float()  # whole, also while FSDP gathers it
            if self.criterion.score_based:
                ranks = from_out_in(module, group_ranks(self.criterion.scores(weight, stats[name]), self.m))
                self.ranks[index][name] = self.store.put(to_out_in(module, local_rows(ranks, like)))
            else:
                pruned = self.criterion.prune_levels(weight, stats[name], range(1, self.m), self.m)
                self.pruned[index][name] = {
                    level: self.store.put(local_rows(from_out_in(module, w).to(like.dtype), like))
                    for level, (w, _) in pruned.items()}
        return outputs

    def weight(self, index: int, name: str, level: int, device: torch.device | None = None) -> Tensor:
        """Weight (module layout) of linear ``name`` in block ``index`` at ``level``, on ``device``
        (default: where the cache keeps it). A score-based level is masked there: the dense weight
        and its ranks travel (one byte a weight), not a masked copy made on the CPU."""
        dense = self.dense[index][name]
        device = device or dense.device
        if level == 0:
            return dense.to(device, non_blocking=True)
        if level == self.m:
            return torch.zeros(dense.shape, dtype=dense.dtype, device=device)
        if self.criterion.score_based:
            module = self.linears[index][name]
            ranks = self.ranks[index][name].to(device, non_blocking=True)
            return dense.to(device, non_blocking=True) * from_out_in(module, mask_from_ranks(ranks, level))
        return self.pruned[index][name][level].to(device, non_blocking=True)

    @torch.no_grad()
    def apply(self, levels: Sequence[int | Mapping[str, int]]) -> list[int]:
        """Write the weights for ``levels`` (one per block: a level for all its linears, or
        {linear name: level}) into the model, touching only linears whose level changed since the
        last call. Returns the indices of the blocks rewritten."""
        if len(levels) != len(self.blocks):
            raise ValueError(f"{len(levels)} levels for {len(self.blocks)} blocks")
        changed = []
        for index, level in enumerate(levels):
            wanted = dict(level) if isinstance(level, Mapping) else dict.fromkeys(self.linears[index], level)
            if wanted != self.current[index]:
                settle(self.blocks[index])
                for name, module in self.linears[index].items():
                    if wanted[name] != self.current[index][name]:
                        target = local(stored_weight(module))  # in place: its version counter moves (offload.prefetch)
                        target.copy_(self.weight(index, name, wanted[name], target.device))
                self.current[index] = wanted
                changed.append(index)
        return changed

    def restore_dense(self) -> None:
        self.apply([0] * len(self.blocks))

    def close(self) -> None:
        """Put the dense weights back and free what the cache holds: its files (disk storage), or
        its pinned host memory, which the pinned allocator would otherwise keep (cpu storage)."""
        self.restore_dense()
        self.dense, self.ranks, self.pruned = [], [], []
        self.store.close()
