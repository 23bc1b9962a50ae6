"""Typed user code against the public API: `tests/test_lint.py` runs mypy on this file (the
library's own modules are followed silently), so a signature change users would trip over fails."""

from __future__ import annotations

import torch
from torch import nn

from msp_callback import MSPCallback, MSPTrainerCallback, SparsityPlan, nm_string, parse_nm, prune, restore_masks
from msp_callback.config import MSPConfig, SearchSettings
from msp_callback.export import ExportRecord, load_pruned, save_pruned


def pruned(model: nn.Module, batches: list[torch.Tensor]) -> tuple[nn.Module, SparsityPlan]:
    n, m = parse_nm("3:4")
    plan = SparsityPlan.uniform(n, m, 30, criterion="wanda")
    label: str = nm_string(plan.target, plan.m)
    model = prune(model, plan, batches, progress=False)
    count: int = restore_masks(model, plan)
    return model, plan if label and count >= 0 else plan


def exported(model: nn.Module, plan: SparsityPlan) -> ExportRecord:
    record = save_pruned(model, "out", plan, drop_pruned_blocks=True)
    reloaded, again = load_pruned("out")
    return again if reloaded is not None else record


def callbacks() -> list[object]:
    search = SearchSettings(population=8, generations=4)
    config = MSPConfig(sparsity="2:4", population=search.population)
    return [MSPCallback(sparsity=config.sparsity, population=8), MSPTrainerCallback(sparsity="2:4", when="manual")]
