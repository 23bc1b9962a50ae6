"""Fitness for the search: perplexity on a fitness split, lower is better.

The fast path, on by default, does three things:

- the `LevelCache` writes in only the blocks whose level changed since the last individual;
- the inputs of every block are kept from the last evaluation, so blocks *before* the first
  changed one are not run again (individuals are evaluated in lexicographic order, so
  neighbours share long prefixes);
- the head (final norm, LM head, any softcapping) runs through the model's own forward, with
  the block stack replaced for that call by a stand-in that returns the cached last hidden
  states: no per-architecture code.

The fitness split is drawn from the calibration corpus, never from the evaluation text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..calibration import BlockInputs, block_output, capture_block_inputs
from ..evaluate import perplexity
from ..models import find_blocks
from .levels import LevelCache


class _StackReplay(nn.Module):
    """Stands in for the whole block stack for one forward: returns given hidden states. Other
    attributes (e.g. Gemma's ``attention_type``) are read from the real last block."""

    def __init__(self, last_block: nn.Module, tuple_output: bool):
        super().__init__()
        object.__setattr__(self, "_last_block", last_block)  # not registered as a submodule
        self.tuple_output = tuple_output
        self.hidden: Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return (self.hidden,) if self.tuple_output else self.hidden

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_last_block"), name)


class PerplexityFitness:
    """Perplexity of the model with each individual's levels written in by the level cache."""

    def __init__(self, model: nn.Module, cache: LevelCache, windows: Tensor, batch_size: int = 4):
        self.model, self.cache, self.windows, self.batch_size = model, cache, windows, batch_size
        self.blocks = find_blocks(model)
        self.parent, self.attribute = self._owner_of_blocks()
        self.evaluations = 0
        self.blocks_run = 0
        self._inputs: list[BlockInputs] = []  # _inputs[k]: inputs of block k (k = L: final output)
        self._tuple_output = False

    def _owner_of_blocks(self) -> tuple[nn.Module, str]:
        name = next(n for n, mod in self.model.named_modules() if mod is self.blocks)
        parent_name, _, attribute = name.rpartition(".")
        return self.model.get_submodule(parent_name), attribute

    @property
    def tokens(self) -> int:
        return int(self.windows.numel())

    @torch.no_grad()
    def _run_blocks(self, first_changed: int) -> None:
        """Bring ``_inputs`` up to date when blocks from ``first_changed`` on were rewritten."""
        if not self._inputs:
            self._inputs = [capture_block_inputs(self.model, list(self.windows.split(self.batch_size)))]
            first_changed = 0
        start = min(first_changed, len(self._inputs) - 1)
        del self._inputs[start + 1 :]
        for k in range(start, len(self.blocks)):
            inputs = self._inputs[k]
            outputs = [self.blocks[k](h, *a, **kw) for h, a, kw in zip(inputs.hidden, inputs.args, inputs.kwargs)]
            self._tuple_output = isinstance(outputs[0], (tuple, list))
            self._inputs.append(inputs.with_hidden([block_output(o) for o in outputs]))
            self.blocks_run += 1

    def _head_logits(self, replay: _StackReplay, index: int, batch: Tensor) -> Tensor:
        replay.hidden = self._inputs[-1].hidden[index]
        return self.model(input_ids=batch, use_cache=False).logits

    def evaluate(self, levels: Sequence[int]) -> float:
        changed = self.cache.apply(levels)
        self._run_blocks(min(changed, default=len(self.blocks)))
        replay = _StackReplay(self.blocks[-1], self._tuple_output)
        setattr(self.parent, self.attribute, nn.ModuleList([replay]))
        try:
            return perplexity(self.model, self.windows, self.batch_size, progress=False,
                              logits_fn=lambda i, b: self._head_logits(replay, i, b))
        finally:
            setattr(self.parent, self.attribute, self.blocks)
            self.evaluations += 1

    def __call__(self, individuals: Sequence[Sequence[int]]) -> list[float]:
        order = sorted(range(len(individuals)), key=lambda i: list(individuals[i]))
        scores: list[float] = [0.0] * len(individuals)
        for i in order:
            scores[i] = self.evaluate(individuals[i])
        return scores
