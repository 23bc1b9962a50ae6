"""Fitness for the search, lower is better: perplexity on a fitness split (the paper's), or
KL divergence to the dense model's next-token distribution (`KLFitness`, as in EvoPress).

The fast path, on by default, does three things:

- the `LevelCache` writes in only the blocks whose level changed since the last individual;
- the inputs of every block are kept from the last evaluation, so blocks *before* the first
  changed one are not run again (individuals are evaluated in lexicographic order, so
  neighbours share long prefixes); they live where the level cache does (beside the model,
  in CPU memory, or in memory-mapped files), one reused slot per block and batch;
- the head (final norm, LM head, any softcapping) runs through the model's own forward, with
  the block stack replaced for that call by a stand-in that returns the cached last hidden
  states: no per-architecture code.

The fitness split is drawn from the calibration corpus, never from the evaluation text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..block_walk import BlockInputs, BlockStandIn, block_output, capture_stack_inputs
from ..evaluate import perplexity
from ..models import blocks_replaced, find_blocks, input_device
from ..sharded import settle
from ..units import UnitLayout
from .level_cache import LevelCache


class _StackReplay(BlockStandIn):
    """Stands in for the whole block stack for one forward: returns given hidden states."""

    def __init__(self, last_block: nn.Module, tuple_output: bool):
        super().__init__(last_block)
        self.tuple_output = tuple_output
        self.hidden: Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return (self.hidden,) if self.tuple_output else self.hidden


class CachedFitness:
    """Scores individuals with the level cache and block prefix cache; subclasses turn the
    head's logits into one number (lower is better) in `_score`."""

    def __init__(self, model: nn.Module, cache: LevelCache, windows: Tensor, batch_size: int = 4,
                 layout: UnitLayout | None = None):
        """``layout``: the units an individual's levels belong to (default: one level per block)."""
        windows = windows.to(input_device(model))
        self.model, self.cache, self.windows, self.batch_size = model, cache, windows, batch_size
        self.layout = layout or UnitLayout.of_model(model, "block")
        self.blocks = find_blocks(model)
        self.evaluations = 0
        self.blocks_run = 0
        self._inputs: list[BlockInputs] = []  # _inputs[k]: inputs of block k (k = L: final output)
        self._levels: list[int] = []  # the levels _inputs were computed at
        self._tuple_output = False
        self._slots: dict[tuple[int, int], Tensor] = {}  # (block, batch) -> its hidden states on the cache's store
        self._device = windows.device

    def _keep(self, block: int, batch: int, hidden: Tensor) -> Tensor:
        """Hidden states to keep as block ``block``'s input: beside the model, or written into
        one reused slot on the level cache's store (CPU or memory-mapped disk)."""
        if self.cache.store.kind == "device":
            return hidden
        slot = self._slots.get((block, batch))
        if slot is None or slot.shape != hidden.shape:
            slot = self._slots[(block, batch)] = self.cache.store.put(hidden)
        else:
            slot.copy_(hidden)
        return slot

    @property
    def tokens(self) -> int:
        return int(self.windows.numel())

    @torch.no_grad()
    def _run_blocks(self, first_changed: int) -> None:
        """Bring ``_inputs`` up to date when blocks from ``first_changed`` on were rewritten."""
        if not self._inputs:
            self._stack = capture_stack_inputs(self.model, list(self.windows.split(self.batch_size)))
            self._inputs = [self._stack.block(0)]
            first_changed = 0
        start = min(first_changed, len(self._inputs) - 1)
        del self._inputs[start + 1 :]
        for k in range(start, len(self.blocks)):
            inputs = self._inputs[k]
            outputs = [self.blocks[k](h.to(self._device, non_blocking=True), *a, **kw)
                       for h, a, kw in zip(inputs.hidden, inputs.args, inputs.kwargs)]
            settle(self.blocks[k])  # an FSDP block back to its shard: one gathered block at a time
            self._tuple_output = isinstance(outputs[0], (tuple, list))
            hidden = [self._keep(k + 1, b, block_output(o)) for b, o in enumerate(outputs)]
            self._inputs.append(self._stack.block(k + 1, hidden) if k + 1 < len(self.blocks) else BlockInputs(hidden))
            self.blocks_run += 1

    def _head_logits(self, replay: _StackReplay, index: int, batch: Tensor) -> Tensor:
        replay.hidden = self._inputs[-1].hidden[index].to(self._device, non_blocking=True)
        return self.model(input_ids=batch, use_cache=False).logits

    def _score(self, logits_fn: Callable[[int, Tensor], Tensor]) -> float:
        raise NotImplementedError

    def _per_block(self, levels: Sequence[int]) -> list[Any]:
        """An individual's unit levels as the level cache takes them: per block, an int or {linear: level}."""
        if len(levels) != self.layout.num_units:
            raise ValueError(f"{len(levels)} levels for {self.layout.num_units} {self.layout.granularity} units")
        if self.layout.granularity == "block":
            return list(levels)
        return [self.layout.linear_levels(levels, b, list(self.cache.linears[b])) for b in range(len(self.blocks))]

    def evaluate(self, levels: Sequence[int]) -> float:
        self.cache.apply(self._per_block(levels))
        # compare with this fitness's own last levels, not the cache's: another fitness (or
        # restore_dense) may have moved the cache in between
        differ = [self.layout.block_of(i) for i, (old, new) in enumerate(zip(self._levels, levels)) if old != new]
        first = min(differ, default=len(self.blocks)) if self._levels else 0
        self._levels = []  # until the blocks have run: an exception half-way leaves nothing trusted
        self._run_blocks(first)
        self._levels = list(levels)
        replay = _StackReplay(self.blocks[-1], self._tuple_output)
        try:
            with blocks_replaced(self.model, nn.ModuleList([replay])):
                return self._score(lambda i, b: self._head_logits(replay, i, b))
        finally:
            self.evaluations += 1

    def release(self) -> None:
        """Drop the cached block inputs (they may hold the level cache's pinned or mapped memory)."""
        self._inputs, self._levels, self._slots = [], [], {}

    def __call__(self, individuals: Sequence[Sequence[int]]) -> list[float]:
        order = sorted(range(len(individuals)), key=lambda i: list(individuals[i]))
        scores: list[float] = [0.0] * len(individuals)
        for i in order:
            scores[i] = self.evaluate(individuals[i])
        return scores


class PerplexityFitness(CachedFitness):
    """Perplexity (torchmetrics) on the fitness split: the paper's fitness."""

    def _score(self, logits_fn: Callable[[int, Tensor], Tensor]) -> float:
        return perplexity(self.model, self.windows, self.batch_size, progress=False, logits_fn=logits_fn)


class KLFitness(CachedFitness):
    """Mean per-token KL(dense || pruned) over the dense model's top-k tokens (as in EvoPress).

    The dense top-k log-probabilities are computed once, when the fitness is built, from the model
    as it is then (dense); the pruned log-probabilities are full log-softmaxes gathered at those
    k tokens, so the sum covers most of the dense probability mass without storing full logits."""

    def __init__(self, model: nn.Module, cache: LevelCache, windows: Tensor, batch_size: int = 4,
                 layout: UnitLayout | None = None, top_k: int = 64):
        super().__init__(model, cache, windows, batch_size, layout)
        self.cache.restore_dense()
        with torch.no_grad():
            self._dense = [
                model(input_ids=b, use_cache=False).logits.float().log_softmax(-1).topk(top_k, dim=-1)
                for b in windows.split(batch_size)
            ]

    @torch.no_grad()
    def _score(self, logits_fn: Callable[[int, Tensor], Tensor]) -> float:
        total, count = 0.0, 0
        for i, batch in enumerate(self.windows.split(self.batch_size)):
            dense_logp, index = self._dense[i]
            pruned_logp = logits_fn(i, batch).float().log_softmax(-1).gather(-1, index)
            total += float((dense_logp.exp() * (dense_logp - pruned_logp)).sum())
            count += index.shape[0] * index.shape[1]
        return total / count


FITNESSES: dict[str, type[CachedFitness]] = {"ppl": PerplexityFitness, "kl": KLFitness}
