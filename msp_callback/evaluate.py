"""Perplexity with `torchmetrics.text.Perplexity` over non-overlapping windows."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchmetrics.text import Perplexity
from tqdm.auto import tqdm

IGNORE_INDEX = -100


@torch.no_grad()
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
    if windows.ndim != 2 or windows.shape[0] == 0:
        raise ValueError(f"windows must be a non-empty (n, seqlen) tensor, got shape {tuple(windows.shape)}")
    device = next(model.parameters()).device
    # sync_on_compute=False: under DDP each rank scores its own model state (e.g. its share of
    # a search generation); torchmetrics would otherwise merge ranks, or hang when they differ.
    metric = Perplexity(ignore_index=IGNORE_INDEX, sync_on_compute=False).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        for index, batch in enumerate(tqdm(windows.split(batch_size), desc=desc, disable=not progress)):
            batch = batch.to(device)
            with autocast:
                logits = logits_fn(index, batch) if logits_fn else model(input_ids=batch, use_cache=False).logits
            metric.update(logits[:, :-1].float(), batch[:, 1:].long())
    finally:
        model.train(was_training)
    return float(metric.compute())
