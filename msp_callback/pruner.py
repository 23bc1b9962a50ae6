"""Prune a model to a `SparsityPlan` with a criterion (framework-free).

All criteria run on the one sequential driver in `calibration`: each block is pruned using the
inputs produced by the already-pruned blocks before it, as in SparseGPT and Wanda. Masks are
installed with `torch.nn.utils.parametrize` so later training keeps the pattern.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .block_walk import BlockInputs, CalibrationError, collect_input_stats, walk_blocks
from .criteria import Criterion, get_criterion
from .models import ModelStructureError, block_linears, check_causal_lm, find_blocks, fingerprint
from .nm import check_divisible, from_out_in, has_pruning_masks, install_mask, stored_weight, to_out_in
from .plan import SparsityPlan
from .saving import record_in_config
from .sharded import is_sharded, local
from .units import UnitLayout

log = logging.getLogger(__name__)


def check_model_fits(model: nn.Module, m: int) -> None:
    """A causal LM whose every block linear splits into groups of M and holds finite weights."""
    check_causal_lm(model)
    for i, block in enumerate(find_blocks(model)):
        for name, module in block_linears(block).items():
            check_divisible(to_out_in(module, module.weight).shape[1], m, f"block {i} {name}")
            if not bool(torch.isfinite(local(module.weight.detach())).all()):  # each rank checks its shard
                raise ModelStructureError(f"block {i} {name}: the weight holds NaN or inf values, and pruning would "
                                          "carry them into every output; load a checkpoint with finite weights")


@torch.no_grad()
def prune_block(block: nn.Module, level: int | Mapping[str, int], m: int, criterion: Criterion,
                inputs: BlockInputs | None, install: bool = True) -> None:
    """Prune the linears of one block (in place) at ``level`` of ``m``, one level for all or
    {linear name: level}, and install their masks."""
    linears = block_linears(block)
    levels = dict(level) if isinstance(level, Mapping) else dict.fromkeys(linears, level)
    # at level 0 nothing is pruned: all-True masks keep the linear trainable and updatable
    stats = (collect_input_stats(block, linears, inputs, criterion.statistic) if any(levels.values())
             else dict.fromkeys(linears))
    for name, module in linears.items():
        if levels[name] == 0:
            if install:
                install_mask(module, torch.ones_like(module.weight, dtype=torch.bool))
            continue
        weight = to_out_in(module, module.weight.data).float()
        pruned, keep = criterion.prune_weight(weight, stats[name], levels[name], m)
        with torch.no_grad():  # in place on the parameter itself: its version counter tells the offload it changed
            stored_weight(module).copy_(from_out_in(module, pruned).to(module.weight.dtype))
        if install:
            install_mask(module, from_out_in(module, keep))

def prepare_prune(model: nn.Module, plan: SparsityPlan, criterion: str | Criterion | None = None,
                  install: bool = True) -> tuple[Criterion, bool]:
    """Check that ``plan`` fits ``model`` and that the model is not pruned yet; returns the
    criterion and whether masks can be installed (not on an FSDP-sharded model)."""
    criterion = get_criterion(criterion or plan.criterion)
    plan.check_model(fingerprint(model))
    plan.check_units(UnitLayout.of_model(model, plan.granularity))
    check_model_fits(model, plan.m)
    if has_pruning_masks(model):
        raise RuntimeError(
            "the model already carries N:M masks; call msp_callback.nm.remove_masks(model) "
            "(bake=True keeps their zeros) before pruning it again"
        )
    log.info("pruning with %s: %s", criterion.name, plan.describe())
    if install and is_sharded(model):
        log.warning("the model is sharded (FSDP): pruning writes zeros into the shards but installs no masks; "
                    "restore_masks(model) on the saved, gathered model gets them back")
        install = False
    return criterion, install


def prune(
    model: nn.Module,
    plan: SparsityPlan,
    calibration: Sequence[Tensor] | None = None,
    criterion: str | Criterion | None = None,
    install: bool = True,
    progress: bool = True,
) -> nn.Module:
    """Prune ``model`` in place to ``plan``'s per-block levels and return it.

    Args:
        calibration: batches of token ids (B, T); required unless the criterion needs no inputs.
        criterion: overrides ``plan.criterion`` (a name from the registry or an instance).
        install: install mask parametrizations (True) or only write zeros into the weights.
    """
    criterion, install = prepare_prune(model, plan, criterion, install)

    def visit(index: int, block: nn.Module, inputs: BlockInputs | None) -> None:
        prune_block(block, plan.linear_levels(index, block_linears(block)), plan.m, criterion, inputs, install)

    needs_inputs = criterion.statistic != "none"
    if needs_inputs and (calibration is None or len(calibration) == 0):
        raise CalibrationError(
            f"criterion {criterion.name!r} needs calibration batches and none were given: pass "
            "calibration=[token-id tensors] (see msp_callback.data.sample_calibration)"
        )
    walk_blocks(model, calibration, visit, desc=f"prune ({criterion.name})", progress=progress, needs_inputs=needs_inputs,
                writes=True)  # an offloaded model's pruned weights and masks go back to its files
    record_in_config(model, plan)  # save_pretrained then carries the plan (see saving.py)
    return model
