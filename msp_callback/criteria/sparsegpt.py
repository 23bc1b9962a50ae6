"""SparseGPT (Frantar & Alistarh, 2023) with N:M masks.

Columns are processed left to right in blocks; in every group of M columns the N weights with
the smallest OBS saliency w^2 / [H^-1]_jj^2 are pruned, and the error of each pruned or kept column
is spread onto the columns to its right through the inverse Hessian's Cholesky factor, so the
layer's output on the calibration inputs changes as little as possible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..nm import check_divisible
from .base import Criterion, InputStats, ieee_float32
from .registry import register_criterion


@register_criterion
class SparseGPT(Criterion):
    name = "sparsegpt"
    statistic = "gram"

    def __init__(self, block_size: int = 128, damping: float = 0.01):
        self.block_size = block_size
        self.damping = damping

    def _inverse_hessian_factor(self, stats: InputStats | None) -> tuple[Tensor, Tensor]:
        """(upper Cholesky factor of H^-1, dead inputs), H = 2 X^T X / n, damped; computed once
        per statistics object, so linears sharing their input (q/k/v, gate/up) share it."""
        if stats is None or stats.gram is None or stats.count == 0:
            raise ValueError("sparsegpt needs calibration inputs (no input statistics were collected)")
        key = ("sparsegpt factor", self.damping)
        if key not in stats.derived:
            stats.derived[key] = self._factor(stats)
        return stats.derived[key]

    def _factor(self, stats: InputStats) -> tuple[Tensor, Tensor]:
        hessian = stats.gram.double() * (2.0 / stats.count)
        dead = hessian.diagonal() == 0
        hessian[dead, dead] = 1.0
        hessian.diagonal().add_(self.damping * hessian.diagonal().mean())
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
        return torch.linalg.cholesky(inverse, upper=True).float(), dead

    @torch.no_grad()
    def prune_weight(self, weight: Tensor, stats: InputStats | None, level: int, m: int) -> tuple[Tensor, Tensor]:
        return self.prune_levels(weight, stats, [level], m)[level]

    @torch.no_grad()
    def prune_levels(self, weight: Tensor, stats: InputStats | None, levels: Sequence[int], m: int
                     ) -> dict[int, tuple[Tensor, Tensor]]:
        """One inverse-Hessian factor and one column sweep serve every level (the level cache asks
        for 1..M-1): the rows are independent, so the levels' copies are swept stacked."""
        check_divisible(weight.shape[1], m)
        levels = list(levels)
        swept = [level for level in dict.fromkeys(levels) if level]
        out = {0: (weight.clone().float(), torch.ones_like(weight, dtype=torch.bool))} if 0 in levels else {}
        if swept:
            with ieee_float32():  # the sweep's products in float32, TF32 switched on or not
                w, keep = self._sweep(weight, self._inverse_hessian_factor(stats), swept, m)
            rows = weight.shape[0]
            out.update({level: (w[i * rows:(i + 1) * rows], keep[i * rows:(i + 1) * rows])
                        for i, level in enumerate(swept)})
        return {level: out[level] for level in levels}

    def _sweep(self, weight: Tensor, factor: tuple[Tensor, Tensor], levels: list[int], m: int
               ) -> tuple[Tensor, Tensor]:
        """The OBS column sweep on float32 copies of ``weight``, one per level, stacked by rows.

        Within each block of columns the errors of earlier columns reach a group of M columns
        lazily, in one product when the sweep gets there (the same arithmetic as updating every
        column to the right after each column, in another order), so the per-column work touches
        M columns instead of the whole block. The sweep works on the transpose, where a group of
        columns is contiguous.
        """
        rows, in_features = weight.shape
        block_size = max(m, self.block_size - self.block_size % m)
        hinv, dead = factor
        wt = weight.float().t().repeat(1, len(levels))  # (in, levels x rows)
        wt[dead] = 0.0
        row_level = torch.tensor(levels, device=wt.device).repeat_interleave(rows)
        keep = torch.ones_like(wt, dtype=torch.bool)
        for start in range(0, in_features, block_size):
            end = min(start + block_size, in_features)
            hinv_blk = hinv[start:end, start:end]
            d = hinv_blk.diagonal().unsqueeze(1)
            err_blk = torch.zeros(end - start, wt.shape[1], dtype=wt.dtype, device=wt.device)
            for g in range(0, end - start, m):
                group = wt[start + g : start + g + m] - hinv_blk[:g, g : g + m].t() @ err_blk[:g]
                group_keep = _ranks_down(group**2 / d[g : g + m] ** 2) >= row_level
                for j in range(m):
                    err = group[j] * ~group_keep[j] / d[g + j]
                    group[j + 1 :] -= hinv_blk[g + j, g + j + 1 : g + m].unsqueeze(1) * err
                    err_blk[g + j] = err
                wt[start + g : start + g + m] = group * group_keep
                keep[start + g : start + g + m] = group_keep
            wt[end:] -= hinv[start:end, end:].t() @ err_blk
        return (wt * keep).t().contiguous(), keep.t().contiguous()


def _ranks_down(scores: Tensor) -> Tensor:
    """Rank of every entry in its column of ``scores`` (M, n): 0 = smallest, ties left (upper)
    first, as `nm.group_ranks` ranks a group, by pairwise comparison (M is small)."""
    m = scores.shape[0]
    below = scores.unsqueeze(0) < scores.unsqueeze(1)  # [j, k]: entry k is smaller than entry j
    earlier_tie = (scores.unsqueeze(0) == scores.unsqueeze(1)) & torch.ones(
        m, m, dtype=torch.bool, device=scores.device).tril(-1).unsqueeze(-1)
    return (below | earlier_tie).sum(1)
