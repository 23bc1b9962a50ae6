"""What one level of a plan applies to: a whole block, its attention or its MLP linears, or each linear.

A plan's ``levels`` hold one level per *unit*, block-major: with granularity ``block`` a unit is a
decoder block (the paper's plan); with ``attn_mlp`` each block has two units, ``attn`` (every linear
whose name says attention) and ``mlp`` (the rest); with ``linear`` every prunable linear is a unit.
A unit's *weight* is its parameter count divided by the greatest common divisor over all units, so
the budget ``sum(weight * level) == target * sum(weight)`` is exact by parameter count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

GRANULARITIES = ("block", "attn_mlp", "linear")


def linear_group(name: str) -> str:
    """``attn`` for a linear whose name (relative to its block) says attention, else ``mlp``."""
    lowered = name.lower()
    return "attn" if "attn" in lowered or "attention" in lowered else "mlp"


def unit_of(granularity: str, linear_name: str) -> str:
    """The unit a block linear belongs to at ``granularity``."""
    if granularity == "block":
        return "block"
    if granularity == "attn_mlp":
        return linear_group(linear_name)
    if granularity == "linear":
        return linear_name
    raise ValueError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")


@dataclass(frozen=True)
class UnitLayout:
    """The units of one model at one granularity.

    Attributes:
        granularity: one of `GRANULARITIES`.
        names: unit names within every block, e.g. ``("attn", "mlp")``.
        num_blocks: decoder blocks.
        weights: one per unit, block-major: parameters over their gcd (all 1 for blocks of one size).
    """

    granularity: str
    names: tuple[str, ...]
    num_blocks: int
    weights: tuple[int, ...]

    @classmethod
    def of_model(cls, model: nn.Module, granularity: str) -> "UnitLayout":
        """Read the units from ``model``'s decoder blocks; every block must have the same ones."""
        from .models import ModelStructureError, block_linears, find_blocks

        blocks = find_blocks(model)
        per_block: list[dict[str, int]] = []
        for index, block in enumerate(blocks):
            sizes: dict[str, int] = {}
            for name, module in block_linears(block).items():
                unit = unit_of(granularity, name)
                sizes[unit] = sizes.get(unit, 0) + module.weight.numel()
            per_block.append(sizes)
        names = tuple(per_block[0])  # in module order
        for index, sizes in enumerate(per_block):
            if set(sizes) != set(names):
                raise ModelStructureError(
                    f"block {index} has units {sorted(sizes)} but block 0 has {sorted(names)}: per-{granularity} "
                    "levels need the same linears in every block; use granularity='block'")
        if granularity == "block":
            return cls(granularity, names, len(blocks), (1,) * len(blocks))  # blocks counted equally, as in the paper
        counts = [sizes[u] for sizes in per_block for u in names]
        divisor = math.gcd(*counts)
        return cls(granularity, names, len(blocks), tuple(c // divisor for c in counts))

    @property
    def units_per_block(self) -> int:
        return len(self.names)

    @property
    def num_units(self) -> int:
        return self.num_blocks * len(self.names)

    def block_of(self, unit: int) -> int:
        return unit // len(self.names)

    def block_levels(self, levels: Sequence[int], block: int) -> dict[str, int]:
        """{unit name: level} of ``block`` in the unit levels ``levels``."""
        start = block * len(self.names)
        return dict(zip(self.names, levels[start : start + len(self.names)]))

    def linear_levels(self, levels: Sequence[int], block: int, linear_names: Sequence[str]) -> dict[str, int]:
        """{linear name: level} for the linears of ``block``."""
        units = self.block_levels(levels, block)
        return {name: units[unit_of(self.granularity, name)] for name in linear_names}

    def from_block_levels(self, block_levels: Sequence[int]) -> list[int]:
        """Unit levels giving every unit of each block its block's level (budget kept: each block's
        units share one level)."""
        if len(block_levels) != self.num_blocks:
            raise ValueError(f"{len(block_levels)} block levels for {self.num_blocks} blocks")
        return [level for level in block_levels for _ in self.names]

    def budget(self, target: int) -> int:
        return target * sum(self.weights)

    def spent(self, levels: Sequence[int]) -> int:
        return sum(w * level for w, level in zip(self.weights, levels))
