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

from ..nm import check_divisible, nm_mask
from .base import Criterion, InputStats
from .registry import register_criterion


@register_criterion
class SparseGPT(Criterion):
    name = "sparsegpt"
    statistic = "gram"

    def __init__(self, block_size: int = 128, damping: float = 0.01):
        self.block_size = block_size
        self.damping = damping

    def _inverse_hessian_factor(self, stats: InputStats | None) -> tuple[Tensor, Tensor]:
        """(upper Cholesky factor of H^-1, dead inputs), H = 2 X^T X / n, damped."""
        if stats is None or stats.gram is None or stats.count == 0:
            raise ValueError("sparsegpt needs calibration inputs (no input statistics were collected)")
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
        """One inverse-Hessian factor serves every level (the level cache asks for 1..M-1)."""
        check_divisible(weight.shape[1], m)
        factor = self._inverse_hessian_factor(stats) if any(levels) else None
        return {level: self._sweep(weight, factor, level, m) for level in levels}

    def _sweep(self, weight: Tensor, factor: tuple[Tensor, Tensor] | None, level: int, m: int) -> tuple[Tensor, Tensor]:
        """The OBS column sweep at one level, on a float32 copy of ``weight``."""
        in_features = weight.shape[1]
        block_size = max(m, self.block_size - self.block_size % m)
        w = weight.clone().float()
        keep = torch.ones_like(w, dtype=torch.bool)
        if level == 0 or factor is None:
            return w, keep
        hinv, dead = factor
        w[:, dead] = 0.0
        for start in range(0, in_features, block_size):
            end = min(start + block_size, in_features)
            w_blk = w[:, start:end].clone()
            hinv_blk = hinv[start:end, start:end]
            err_blk = torch.zeros_like(w_blk)
            d = hinv_blk.diagonal()
            for j in range(end - start):
                if j % m == 0:
                    saliency = w_blk[:, j : j + m] ** 2 / d[j : j + m].unsqueeze(0) ** 2
                    keep[:, start + j : start + j + m] = nm_mask(saliency, level, m)
                col = w_blk[:, j]
                quantised = col * keep[:, start + j]
                err = (col - quantised) / d[j]
                w_blk[:, j:] -= err.unsqueeze(1) * hinv_blk[j, j:].unsqueeze(0)
                w_blk[:, j] = quantised
                err_blk[:, j] = err
            w[:, start:end] = w_blk
            w[:, end:] -= err_blk @ hinv[start:end, end:]
        return w * keep, keep
