"""Wanda (Sun et al., 2023): score |W_ij| * ||X_j||_2 over the calibration tokens."""

from torch import Tensor

from .base import Criterion, InputStats
from .registry import register_criterion


@register_criterion
class Wanda(Criterion):
    name = "wanda"
    statistic = "diag"

    def scores(self, weight: Tensor, stats: InputStats | None) -> Tensor:
        if stats is None:
            raise ValueError("wanda needs calibration inputs")
        return weight.abs() * stats.diag.sqrt().unsqueeze(0)
