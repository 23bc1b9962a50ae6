"""Magnitude pruning: keep the largest |w| in every group."""

from torch import Tensor

from .base import Criterion, InputStats
from .registry import register_criterion


@register_criterion
class Magnitude(Criterion):
    name = "magnitude"
    statistic = "none"

    def scores(self, weight: Tensor, stats: InputStats | None) -> Tensor:
        return weight.abs()
