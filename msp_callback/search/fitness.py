"""Fitness functions for the search: lower is better.

`PerplexityFitness` is the default fast path: the `LevelCache` swaps in only the blocks whose
level changed, then the torchmetrics evaluator runs on a fitness split drawn from the
calibration corpus (never from the evaluation text).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..evaluate import perplexity
from .levels import LevelCache


class PerplexityFitness:
    """Perplexity of the model with each individual's levels written in by the level cache."""

    def __init__(self, model: nn.Module, cache: LevelCache, windows: Tensor, batch_size: int = 4):
        self.model, self.cache, self.windows, self.batch_size = model, cache, windows, batch_size
        self.evaluations = 0

    @property
    def tokens(self) -> int:
        return int(self.windows.numel())

    def __call__(self, individuals: Sequence[Sequence[int]]) -> list[float]:
        # neighbours in lexicographic order share leading levels: fewer blocks to rewrite
        order = sorted(range(len(individuals)), key=lambda i: list(individuals[i]))
        scores: list[float] = [0.0] * len(individuals)
        for i in order:
            self.cache.apply(individuals[i])
            scores[i] = perplexity(self.model, self.windows, self.batch_size, progress=False)
            self.evaluations += 1
        return scores
