"""A pruned model saved the ordinary way stays pruned, and its masks come back.

Two halves make every framework's save work without the library on the reading side:

- Weights: every masked layer writes its weight under the plain ``weight`` key with the mask
  applied, and never the ``parametrizations.*`` keys (the state-dict hooks `nm.install_mask`
  registers). So ``save_pretrained``, ``trainer.save_model``, ``push_to_hub``,
  ``torch.save(model.state_dict())`` and Lightning checkpoints all hold an ordinary model with the
  pruned weights, which a plain ``from_pretrained`` or ``load_state_dict`` reads exactly.
- Plan: `prune` records the plan in the model's config (``config.msp_sparsity``), which
  ``save_pretrained`` and ``push_to_hub`` write into ``config.json``. `restore_masks` reads it
  back and re-installs each mask from the weights' zeros, so training can go on sparse.

A checkpoint resumed by a callback is loaded into a model that does not know its plan yet; there
`install_masks_for_checkpoint` (the callbacks' load hook) reads each block's level from the zeros.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .models import block_linears, find_blocks
from .nm import install_mask, mask_from_zeros, mask_of, to_out_in, zeros_per_group
from .plan import PlanError, SparsityPlan

log = logging.getLogger(__name__)

CONFIG_KEY = "msp_sparsity"  # the attribute of a transformers config that carries the plan
CONFIG_FORMAT_VERSION = 1
_MASK_KEY_TAIL = ".mask"  # older checkpoints: "<layer>.parametrizations.weight.<index>.mask"


# ---------------------------------------------------------------------------- plan in the config
def record_in_config(model: nn.Module, plan: SparsityPlan, removed_blocks: Iterable[int] = ()) -> None:
    """Write ``plan`` (and the original indices of blocks an export removed) into ``model.config``
    so that ``save_pretrained`` carries it; a model without a transformers config is left as is."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return
    setattr(config, CONFIG_KEY, config_entry(plan, removed_blocks))


# Provenance kept in config.json; the rest of a plan's metadata (search history, settings with
# local paths, per-rank counts) stays in the run's own files.
CONFIG_METADATA = ("seed", "best_fitness", "fitness_tokens", "fitness_evaluations", "traces")


def config_entry(plan: SparsityPlan, removed_blocks: Iterable[int] = ()) -> dict[str, Any]:
    """The JSON written under ``config.msp_sparsity``."""
    data = plan.to_dict()
    data["metadata"] = {k: v for k, v in data["metadata"].items() if k in CONFIG_METADATA}
    return {"format_version": CONFIG_FORMAT_VERSION, "plan": data, "removed_blocks": sorted(removed_blocks)}


def plan_from_config(model_or_config: Any) -> tuple[SparsityPlan, list[int]] | None:
    """``(plan, removed block indices)`` recorded in a model's (or a config's) ``msp_sparsity``,
    or None when there is none."""
    config = getattr(model_or_config, "config", model_or_config)
    entry = getattr(config, CONFIG_KEY, None)
    if entry is None:
        return None
    try:
        version = entry.get("format_version")
        if version != CONFIG_FORMAT_VERSION:
            raise PlanError(f"format version {version} is not supported (expected {CONFIG_FORMAT_VERSION})")
        return SparsityPlan.from_dict(entry["plan"]), [int(i) for i in entry.get("removed_blocks", [])]
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise PlanError(f"config.{CONFIG_KEY} is not a valid pruning record ({error}); "
                        f"delete it from config.json to load the weights as a plain model") from None


def forget_plan(model: nn.Module) -> None:
    """Drop the recorded plan (the weights no longer follow it)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)


# ---------------------------------------------------------------------------- masks from zeros
def restore_masks(model: nn.Module, plan: SparsityPlan | None = None, removed_blocks: Iterable[int] = ()) -> int:
    """Re-install the N:M masks of a pruned model loaded without them (a plain ``from_pretrained``
    or ``load_state_dict``): each block linear gets a mask pruning exactly its block's level of
    every group, taken from the weight's zeros (where a group holds more zeros, the leftmost are
    taken). ``plan`` defaults to the one recorded in ``model.config``; ``removed_blocks`` are the
    original indices of blocks an export removed. Returns the number of masks installed."""
    if plan is None:
        found = plan_from_config(model)
        if found is None:
            raise PlanError("the model's config records no pruning plan (config.msp_sparsity): pass the plan "
                            "it was pruned with, e.g. restore_masks(model, SparsityPlan.load('plan.json'))")
        plan, removed_blocks = found
    removed = set(removed_blocks)
    kept = [i for i in range(plan.num_blocks) if i not in removed]
    blocks = find_blocks(model)
    if len(blocks) != len(kept):
        raise PlanError(f"the plan describes {len(kept)} decoder blocks but the model has {len(blocks)}: "
                        "it belongs to another model")
    names = {module: f"block {original} {name}" for block, original in zip(blocks, kept)
             for name, module in block_linears(block).items()}
    targets = {}
    for block, original in zip(blocks, kept):
        linears = block_linears(block)
        levels = plan.linear_levels(original, linears)
        targets.update({module: (levels[name], module.weight) for name, module in linears.items()})
    count = _install_from_zeros(targets, plan.m, names)
    record_in_config(model, plan, removed)
    return count


def _install_from_zeros(targets: dict[nn.Module, tuple[int, Tensor]], m: int, names: dict[nn.Module, str]) -> int:
    """For each {linear: (level, weight)} install the mask pruning ``level`` zeros of every group."""
    for module, (level, weight) in targets.items():
        keep = mask_from_zeros(to_out_in(module, weight.detach()), level, m, names[module])
        install_mask(module, to_out_in(module, keep).to(module.weight.device))
    return len(targets)


def _fewest_zeros(module: nn.Module, weight: Tensor, m: int) -> int:
    return int(zeros_per_group(to_out_in(module, weight.detach()), m).min())


def install_masks_for_checkpoint(model: nn.Module, state_dict: Mapping[str, Tensor], m: int, prefix: str = "") -> int:
    """Before ``state_dict`` loads into ``model``, install the masks it implies: from its mask
    entries (the older checkpoint format), else from the zeros of its plain weights: each linear at
    its unit's level when the model's config records a plan finer than blocks, else at the fewest
    zeros any of its groups holds (a dense linear has groups without zeros); when every linear reads
    as level 0 the state dict is dense and nothing is installed.
    Otherwise every block linear ends up masked: blocks in ``state_dict`` at their level, blocks
    absent from it (another shard of a sharded checkpoint) all-kept until their own shard loads.
    Returns the number of masks installed or updated."""
    count = 0
    for key, mask in state_dict.items():
        if key.startswith(prefix) and ".parametrizations.weight." in key and key.endswith(_MASK_KEY_TAIL):
            owner = key[len(prefix):].split(".parametrizations.weight.")[0]
            install_mask(model.get_submodule(owner), mask.to(torch.bool))
            count += 1
    if count:
        return count
    names = {module: name for name, module in model.named_modules()}
    recorded = plan_from_config(model)
    plan = recorded[0] if recorded is not None and recorded[0].granularity != "block" else None
    removed = set(recorded[1]) if recorded is not None else set()
    kept = [i for i in range(plan.num_blocks) if i not in removed] if plan is not None else []
    present: dict[nn.Module, tuple[int, Tensor]] = {}
    for index, block in enumerate(find_blocks(model)):
        linears = block_linears(block)
        weights = {mod: state_dict[f"{prefix}{names[mod]}.weight"] for mod in linears.values()
                   if f"{prefix}{names[mod]}.weight" in state_dict}
        if not weights:
            continue
        if plan is not None:  # a finer plan: each linear at its own unit's level
            levels = plan.linear_levels(kept[index], linears)
            present.update({mod: (levels[name], weights[mod]) for name, mod in linears.items() if mod in weights})
        else:  # each linear at the fewest zeros any of its groups holds (a dense linear has groups without)
            present.update({mod: (_fewest_zeros(mod, w, m), w) for mod, w in weights.items()})
    if not any(level for level, _ in present.values()):
        return 0
    count = _install_from_zeros(present, m, names)
    loaded = set(present)
    for block in find_blocks(model):
        for mod in block_linears(block).values():
            if mod not in loaded and mask_of(mod) is None:
                install_mask(mod, torch.ones_like(mod.weight, dtype=torch.bool))
    log.info("installed %d N:M masks from the checkpoint's zeros before loading it", count)
    return count

