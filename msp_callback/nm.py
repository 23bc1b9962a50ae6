"""N:M math and the mask parametrization.

Conventions (as in the paper): a group is M consecutive *input* weights of one output row, and
level N is the number of weights *pruned* in every group. Scores are always given in
(out, in) layout; GPT-2's ``Conv1D`` stores (in, out) and is transposed on the way in and out.

Ranks are computed once per weight (one sort); the mask for any level 0..M is then a comparison,
``ranks >= level``, which is what lets a search try many levels per block cheaply.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


class NMPatternError(ValueError):
    """A weight or mask does not follow the N:M pattern it should."""


# ---------------------------------------------------------------------------- layout
def is_conv1d(module: nn.Module) -> bool:
    """GPT-2 style ``Conv1D``: a linear whose weight is stored as (in, out). (Checked by class
    name through the MRO: parametrize subclasses it, and transformers need not be imported.)"""
    return any(cls.__name__ == "Conv1D" for cls in type(module).__mro__)


def to_out_in(module: nn.Module, tensor: Tensor) -> Tensor:
    """View a weight-shaped tensor of ``module`` in (out, in) layout."""
    return tensor.t() if is_conv1d(module) else tensor


def from_out_in(module: nn.Module, tensor: Tensor) -> Tensor:
    """Inverse of `to_out_in`: back to the module's own weight layout."""
    return tensor.t() if is_conv1d(module) else tensor


def check_divisible(in_features: int, m: int, name: str = "layer") -> None:
    if in_features % m:
        divisors = [d for d in (2, 4, 8, 16, 32) if in_features % d == 0]
        raise NMPatternError(
            f"{name}: input width {in_features} is not divisible by M={m}, so it cannot be split "
            f"into groups of {m}; choose an M that divides it (this model allows M in {divisors})"
        )


# ---------------------------------------------------------------------------- ranks and masks
def group_ranks(scores: Tensor, m: int) -> Tensor:
    """Rank of every entry inside its group of ``m`` along the last dim: 0 = least important.

    Ties keep their left-to-right order (stable sort), so the result is deterministic.
    Returns a tensor shaped like ``scores`` (out, in) in the smallest integer type that holds
    0..M-1: one byte a weight up to M = 256 (the level cache keeps one per weight), else int16.
    """
    out_features, in_features = scores.shape
    check_divisible(in_features, m)
    grouped = scores.reshape(out_features, in_features // m, m)
    order = grouped.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(m, device=scores.device).expand_as(order)
    ranks.scatter_(-1, order, positions)
    return ranks.reshape(out_features, in_features).to(torch.uint8 if m <= 256 else torch.int16)


def mask_from_ranks(ranks: Tensor, level: int) -> Tensor:
    """Keep-mask (True = kept) pruning the ``level`` lowest-ranked entries of every group."""
    return ranks >= level


def nm_mask(scores: Tensor, level: int, m: int) -> Tensor:
    """Keep-mask in (out, in) layout with exactly ``level`` zeros in every group of ``m``."""
    return mask_from_ranks(group_ranks(scores, m), level)


def mask_from_zeros(weight: Tensor, level: int, m: int, name: str = "weight") -> Tensor:
    """Keep-mask that prunes exactly ``level`` zeros of every group of an already pruned weight
    (out, in): where a group holds more zeros, the leftmost ones are taken. Raises
    `NMPatternError` if some group has fewer than ``level`` zeros."""
    check_pattern(weight, level, m, name)
    return nm_mask((weight != 0).to(torch.int8), level, m)


def zeros_per_group(tensor: Tensor, m: int) -> Tensor:
    """Number of zero (or False) entries in each group, shape (out, in // m)."""
    out_features, in_features = tensor.shape
    check_divisible(in_features, m)
    return (tensor == 0).reshape(out_features, in_features // m, m).sum(-1)


def check_pattern(tensor: Tensor, level: int, m: int, name: str = "weight", exact: bool = False) -> None:
    """Raise `NMPatternError` at the first group with fewer (or, if ``exact``, other) than
    ``level`` zeros. ``tensor`` is in (out, in) layout; a weight may have extra zeros."""
    zeros = zeros_per_group(tensor, m)
    bad = zeros != level if exact else zeros < level
    if bool(bad.any()):
        row, group = (int(v) for v in bad.nonzero()[0])
        raise NMPatternError(
            f"{name}: row {row}, group {group} (inputs {group * m}..{group * m + m - 1}) has "
            f"{int(zeros[row, group])} zeros, expected {'exactly' if exact else 'at least'} "
            f"{level} of {m}"
        )


# ---------------------------------------------------------------------------- parametrization
class NMMask(nn.Module):
    """Parametrization ``weight -> weight * mask`` with a bool ``mask`` buffer (True = kept).

    Pruned weights read as exact zeros whatever the optimizer does to the stored original, and
    the mask travels with ``state_dict`` and ``.to()``.
    """

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def mask_of(module: nn.Module) -> Tensor | None:
    """The installed N:M keep-mask of ``module`` (module layout), or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations["weight"]:
        if isinstance(p, NMMask):
            return p.mask
    return None


def stored_weight(module: nn.Module) -> Tensor:
    """The tensor holding the weight's values, to write into: the parametrization's stored
    original when masked (``module.weight`` is then recomputed on every access), else the weight."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return module.weight


def _mask_key(module: nn.Module) -> str:
    """State-dict key of the mask buffer below the module's prefix (its index in the
    parametrization list is looked up, never assumed)."""
    for index, p in enumerate(module.parametrizations["weight"]):
        if isinstance(p, NMMask):
            return f"parametrizations.weight.{index}.mask"
    raise KeyError("no NMMask on this module")


ORIGINAL_KEY = "parametrizations.weight.original"


def _only_nm_mask(module: nn.Module) -> bool:
    """True if the weight's parametrizations are exactly one `NMMask` (others are left alone)."""
    return parametrize.is_parametrized(module, "weight") and len(module.parametrizations["weight"]) == 1 \
        and mask_of(module) is not None


@torch.no_grad()
def _save_effective_weight(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post-hook of a masked module: write its weight as the plain ``weight`` key,
    holding the effective (masked) values, and leave the parametrization keys out. Every way of
    saving (``save_pretrained``, ``torch.save(model.state_dict())``, Lightning checkpoints) then
    writes an ordinary model that loads anywhere with the pruned weights. The stored original is
    written as it is when its pruned entries are already zero (the pruners write zeros there), so
    no copy is made; otherwise a masked copy is (the model is never changed)."""
    if not _only_nm_mask(module):
        if mask_of(module) is not None:
            warnings.warn(f"{prefix}weight carries parametrizations besides the N:M mask: it is saved under "
                          "parametrization keys, which a plain from_pretrained / load_state_dict does not read; "
                          "remove the other parametrizations before saving")
        return
    original = state_dict.pop(prefix + ORIGINAL_KEY, None)
    state_dict.pop(prefix + _mask_key(module), None)
    if original is None:
        return
    mask = mask_of(module)
    if bool(original.detach()[~mask].any()):
        original = original.detach() * mask
    state_dict[prefix + "weight"] = original


def _load_plain_weight(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook of a masked module: a plain ``weight`` key (as written by
    `_save_effective_weight`, or by any unpruned model) loads into the stored original, and the
    installed mask is kept unless the state dict carries its own (an older checkpoint format)."""
    if not _only_nm_mask(module) or prefix + "weight" not in state_dict or prefix + ORIGINAL_KEY in state_dict:
        return
    state_dict[prefix + ORIGINAL_KEY] = state_dict.pop(prefix + "weight")
    state_dict.setdefault(prefix + _mask_key(module), mask_of(module))


def install_mask(module: nn.Module, mask: Tensor) -> None:
    """Install (or update in place) the N:M mask of one module; ``mask`` in module layout.

    The module then saves its weight under the plain key with the mask applied, and loads a plain
    weight into the masked layer (see `_save_effective_weight`, `_load_plain_weight`)."""
    if tuple(mask.shape) != tuple(module.weight.shape):
        raise NMPatternError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(module.weight.shape)}")
    current = mask_of(module)
    if current is not None:
        current.copy_(mask)
        return
    parametrize.register_parametrization(module, "weight", NMMask(mask.to(module.weight.device)))
    if not getattr(module, "_msp_state_hooks", False):  # once per module; idle while it is unmasked
        module.register_state_dict_post_hook(_save_effective_weight)
        module.register_load_state_dict_pre_hook(_load_plain_weight)
        module._msp_state_hooks = True


def install_masks(modules: dict[str, nn.Module], masks: dict[str, Tensor]) -> None:
    """Install masks on several modules, keyed by the same names."""
    missing = set(masks) - set(modules)
    if missing:
        raise KeyError(f"masks for unknown layers: {sorted(missing)[:5]}")
    for name, mask in masks.items():
        install_mask(modules[name], mask)


def masked_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every (name, module) carrying an `NMMask`."""
    for name, module in model.named_modules():
        if mask_of(module) is not None:
            yield name, module


def has_pruning_masks(model: nn.Module) -> bool:
    """True if some installed mask prunes anything (all-kept masks, installed ahead of DDP, do not)."""
    return any(not bool(mask_of(module).all()) for _, module in masked_modules(model))


def remove_masks(model: nn.Module, bake: bool = True) -> int:
    """Remove every N:M parametrization. ``bake=True`` keeps the masked weights (zeros written
    into plain parameters); ``bake=False`` restores the stored originals. Returns the count."""
    count = 0
    for _, module in list(masked_modules(model)):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=bake)
        count += 1
    return count


def bake(model: nn.Module) -> nn.Module:
    """Turn every masked layer into a plain one with zeros in its weight (in place)."""
    remove_masks(model, bake=True)
    return model
