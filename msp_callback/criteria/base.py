"""The criterion interface: turn a weight (and input statistics) into an N:M pruned weight."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..nm import nm_mask

Statistic = Literal["none", "diag", "gram"]


@contextmanager
def ieee_float32() -> Iterator[None]:
    """Float32 matrix products in full IEEE precision for the duration, whatever the process's
    TF32 / reduced-precision switches say (Lightning and HF users often turn TF32 on; oneDNN
    follows the same switch with bf16 on CPUs that have it), restored after. Uses the per-backend
    ``fp32_precision`` settings (torch >= 2.9), which do not clash with the legacy API a caller
    may have used (``allow_tf32``, ``set_float32_matmul_precision``)."""
    backends = [b for b in (torch.backends.cuda.matmul, getattr(torch.backends.mkldnn, "matmul", None))
                if b is not None and hasattr(b, "fp32_precision")]
    if not backends:  # older torch: the legacy switches
        precision, tf32 = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(precision)
            torch.backends.cuda.matmul.allow_tf32 = tf32
        return
    saved = [b.fp32_precision for b in backends]
    for backend in backends:
        backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        for backend, value in zip(backends, saved):
            backend.fp32_precision = value


@dataclass
class InputStats:
    """Running statistics of the inputs X (tokens x in) of one linear, accumulated in float32; one
    object serves every linear fed the same input tensor (q/k/v, gate/up: see
    `block_walk.collect_input_stats`), so the statistic is accumulated once for them.

    ``sq_norm`` is sum_t x_t^2 per input feature (diag of X^T X); ``gram`` is X^T X itself.
    ``derived`` holds what a criterion computed from the finished statistics, for the other
    linears sharing them (SparseGPT's inverse-Hessian factor); adding inputs clears it.
    """

    count: int = 0
    sq_norm: Tensor | None = None
    gram: Tensor | None = None
    derived: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def add(self, x: Tensor, statistic: Statistic) -> None:
        self.derived.clear()
        x = x.reshape(-1, x.shape[-1]).float()
        self.count += x.shape[0]
        if statistic == "gram":
            with ieee_float32():  # SparseGPT's Hessian: TF32 would change its masks
                g = x.t() @ x
            self.gram = g if self.gram is None else self.gram.add_(g)
        elif statistic == "diag":
            s = x.pow(2).sum(0)
            self.sq_norm = s if self.sq_norm is None else self.sq_norm.add_(s)

    @property
    def diag(self) -> Tensor:
        if self.sq_norm is not None:
            return self.sq_norm
        if self.gram is not None:
            return self.gram.diagonal()
        raise ValueError("no input statistics were collected: is the calibration set empty?")


class Criterion:
    """Base class. A criterion names the input statistic it needs and prunes one weight.

    Score-based criteria only implement `scores` (higher = more important); the N:M mask then
    comes from `nm.nm_mask`. Criteria that also update the kept weights (SparseGPT) override
    `prune_weight`. Weights are float32 in (out, in) layout.
    """

    name: ClassVar[str]
    statistic: ClassVar[Statistic] = "none"

    def scores(self, weight: Tensor, stats: InputStats | None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no per-weight scores")

    @property
    def score_based(self) -> bool:
        return type(self).scores is not Criterion.scores

    @torch.no_grad()
    def prune_weight(self, weight: Tensor, stats: InputStats | None, level: int, m: int) -> tuple[Tensor, Tensor]:
        """Return (pruned weight, keep-mask), both (out, in), with ``level`` zeros per group."""
        keep = nm_mask(self.scores(weight, stats), level, m)
        return weight * keep, keep

    def prune_levels(self, weight: Tensor, stats: InputStats | None, levels: Sequence[int], m: int
                     ) -> dict[int, tuple[Tensor, Tensor]]:
        """`prune_weight` at each of ``levels`` (criteria with shared per-weight work override it)."""
        return {level: self.prune_weight(weight, stats, level, m) for level in levels}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
