"""Perplexity with `torchmetrics.text.Perplexity` over non-overlapping windows."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.text import Perplexity
from tqdm.auto import tqdm

from .models import input_device

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PerplexityReport:
    """Perplexity over all predicted tokens, with each window's mean NLL kept so the number can
    be given with its sampling noise (``interval``)."""

    perplexity: float
    window_nll: list[float]

    def interval(self, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
        """Percentile bootstrap interval of the perplexity, resampling whole windows.

        Windows are equal length, so the perplexity of a resample is exp(mean of its window NLLs).
        """
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if not self.window_nll or resamples < 1:
            raise ValueError(f"need window NLLs (perplexity_report keeps them) and resamples >= 1; got "
                             f"{len(self.window_nll)} windows, {resamples} resamples")
        nll, rng = self.window_nll, random.Random(seed)
        means = sorted(sum(rng.choices(nll, k=len(nll))) / len(nll) for _ in range(resamples))
        tail = (1 - level) / 2
        low, high = means[int(tail * (resamples - 1))], means[int((1 - tail) * (resamples - 1))]
        return math.exp(low), math.exp(high)


def perplexity(
    model: nn.Module,
    windows: Tensor,
    batch_size: int = 1,
    bf16: bool = False,
    progress: bool = True,
    desc: str = "perplexity",
    logits_fn: Callable[[int, Tensor], Tensor] | None = None,
) -> float:
    """exp(mean next-token NLL) over every predicted token of ``windows`` (n, seqlen).

    Logits are shifted against labels (torchmetrics does not shift) and taken in float32;
    ``bf16=True`` runs the forward under bfloat16 autocast (3-4x faster on CPU, slightly different
    numbers: say so when you report them; on CPUs without bf16 units it is slower).
    ``logits_fn(batch_index, batch)`` replaces the plain forward (the search uses it to reuse
    cached block outputs).
    """
    return _score(model, windows, batch_size, bf16, progress, desc, logits_fn, keep_windows=False).perplexity


def perplexity_report(model: nn.Module, windows: Tensor, batch_size: int = 1, bf16: bool = False,
                      progress: bool = True, desc: str = "perplexity") -> PerplexityReport:
    """`perplexity` plus each window's mean NLL, from the same forward passes."""
    return _score(model, windows, batch_size, bf16, progress, desc, None, keep_windows=True)


@torch.no_grad()
def _score(model: nn.Module, windows: Tensor, batch_size: int, bf16: bool, progress: bool, desc: str,
           logits_fn: Callable[[int, Tensor], Tensor] | None, keep_windows: bool) -> PerplexityReport:
    if windows.ndim != 2 or windows.shape[0] == 0:
        raise ValueError(f"windows must be a non-empty (n, seqlen) tensor, got shape {tuple(windows.shape)}")
    device = input_device(model)
    # sync_on_compute=False: under DDP each rank scores its own model state (e.g. its share of
    # a search generation); torchmetrics would otherwise merge ranks, or hang when they differ.
    metric = Perplexity(ignore_index=IGNORE_INDEX, sync_on_compute=False).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    window_nll: list[float] = []
    was_training = model.training
    model.eval()
    try:
        for index, batch in enumerate(tqdm(windows.split(batch_size), desc=desc, disable=not progress)):
            batch = batch.to(device)
            with autocast:
                logits = logits_fn(index, batch) if logits_fn else model(input_ids=batch, use_cache=False).logits
            shifted, labels = logits[:, :-1].float(), batch[:, 1:].long()
            metric.update(shifted, labels)
            if keep_windows:
                nll = F.cross_entropy(shifted.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
                counted = (labels != IGNORE_INDEX).sum(1).clamp(min=1)
                window_nll += (nll.sum(1) / counted).tolist()
    finally:
        model.train(was_training)
    return PerplexityReport(float(metric.compute()), window_nll)
