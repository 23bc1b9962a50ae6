"""`SparsityPlan`: the one artifact every stage meets at.

A plan records M, the target level N (weights pruned in every group of M, as in the paper:
"3:4" is 75% zeros), the importance criterion, and one level per decoder block (the paper's plan)
or, at a finer granularity, per unit of every block (attention and MLP, or each linear; see
`units`). It is what an allocation produces, what the pruner consumes, and what the CLI and export
write as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .records import load_record, stamp, unstamp, write_json
from .units import GRANULARITIES, UnitLayout

PLAN_FORMAT_VERSION = 1


class PlanError(ValueError):
    """A plan is malformed or does not belong to the model it is applied to."""


def nm_string(n: int | float, m: int) -> str:
    """"3:4 (75.0%)": N pruned of M, always with the percentage beside it."""
    n_text = f"{n:g}" if isinstance(n, float) else str(n)
    return f"{n_text}:{m} ({100.0 * n / m:.1f}%)"


def parse_nm(text: str) -> tuple[int, int]:
    """Parse "N:M" (N pruned of every M) and check 0 <= N <= M, M >= 1."""
    try:
        n_text, m_text = text.split(":")
        n, m = int(n_text), int(m_text)
    except ValueError:
        raise PlanError(
            f"sparsity {text!r} is not of the form N:M with whole numbers, e.g. '3:4' "
            "(3 of every 4 weights pruned, 75%)"
        ) from None
    check_level_range(n, m)
    return n, m


def check_level_range(n: int, m: int) -> None:
    if m < 1:
        raise PlanError(f"M must be at least 1, got M={m}")
    if not 0 <= n <= m:
        raise PlanError(
            f"N:M = {n}:{m} is impossible: N counts the weights pruned in each group of M, "
            f"so it must lie in 0..{m} (e.g. '3:4' prunes 3 of every 4 weights, 75%)"
        )


@dataclass
class SparsityPlan:
    """Per-block (or per-unit) N:M levels for one model.

    Attributes:
        m: group size M.
        target: target level N; the budget is exact: ``sum(levels) == target * len(levels)`` for a
            block plan (blocks are counted equally; see ``measured_sparsity`` for the parameter-weighted
            value), ``sum(unit_weights * levels) == target * sum(unit_weights)`` (by parameter count)
            for a finer one.
        levels: weights pruned in every group of M, each in 0..M: one entry per decoder block, or
            per unit, block-major (block 0's units, then block 1's, ...).
        criterion: name of the importance criterion that prunes at these levels.
        allocation: how the levels were chosen (uniform, owl, fisher, msp, ...).
        fingerprint: the model the plan was made for (see ``models.fingerprint``).
        metadata: free-form provenance (settings, seed, fitness).
        granularity: what one level applies to: ``block``, ``attn_mlp`` or ``linear`` (see `units`).
        unit_names: the units of every block (finer granularities), e.g. ``["attn", "mlp"]``.
        unit_weights: each unit's parameters over their gcd, one per level (finer granularities).
    """

    m: int
    target: int
    levels: list[int]
    criterion: str = "wanda"
    allocation: str = "uniform"
    fingerprint: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    granularity: str = "block"
    unit_names: list[str] | None = None
    unit_weights: list[int] | None = None

    def __post_init__(self) -> None:
        self.levels = [int(level) for level in self.levels]
        if self.unit_names is not None:
            self.unit_names = [str(name) for name in self.unit_names]
        if self.unit_weights is not None:
            self.unit_weights = [int(w) for w in self.unit_weights]
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(cls, n: int, m: int, num_blocks: int, **kwargs: Any) -> "SparsityPlan":
        """Every block at level ``n``."""
        return cls(m=m, target=n, levels=[n] * num_blocks, allocation="uniform", **kwargs)

    @classmethod
    def for_units(cls, layout: UnitLayout, n: int, m: int, levels: list[int], **kwargs: Any) -> "SparsityPlan":
        """A plan over the units of a `units.UnitLayout` (a block layout gives a block plan)."""
        if layout.granularity == "block":
            return cls(m=m, target=n, levels=levels, **kwargs)
        return cls(m=m, target=n, levels=levels, granularity=layout.granularity, unit_names=list(layout.names),
                   unit_weights=list(layout.weights), **kwargs)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        check_level_range(self.target, self.m)
        if not self.levels:
            raise PlanError("a plan needs at least one block level")
        bad = [(i, lv) for i, lv in enumerate(self.levels) if not 0 <= lv <= self.m]
        if bad:
            i, lv = bad[0]
            raise PlanError(f"block {i} has level {lv}, outside 0..M={self.m}")
        if self.granularity == "block":
            if self.unit_names not in (None, ["block"]) or self.unit_weights is not None:
                raise PlanError("a block plan has no unit_names or unit_weights (they describe finer granularities)")
            if sum(self.levels) != self.target * len(self.levels):
                raise PlanError(
                    f"levels sum to {sum(self.levels)}, but the budget for {len(self.levels)} blocks "
                    f"at target {nm_string(self.target, self.m)} is {self.target * len(self.levels)}"
                )
            return
        if self.granularity not in GRANULARITIES:
            raise PlanError(f"unknown granularity {self.granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        if not self.unit_names or self.unit_weights is None:
            raise PlanError(f"a {self.granularity} plan needs unit_names and unit_weights")
        if len(self.levels) % len(self.unit_names) or len(self.unit_weights) != len(self.levels):
            raise PlanError(f"{len(self.levels)} levels and {len(self.unit_weights)} unit weights do not make whole "
                            f"blocks of {len(self.unit_names)} units {self.unit_names}")
        spent = sum(w * level for w, level in zip(self.unit_weights, self.levels))
        if spent != self.target * sum(self.unit_weights):
            raise PlanError(
                f"levels weighted by parameters sum to {spent}, but the budget at target "
                f"{nm_string(self.target, self.m)} is {self.target * sum(self.unit_weights)}"
            )

    def check_model(self, fingerprint: dict[str, Any]) -> None:
        """Raise a `PlanError` naming the difference if the plan was made for another model."""
        if self.num_blocks != fingerprint["num_blocks"]:
            raise PlanError(
                f"this plan has {self.num_blocks} block levels but the model has "
                f"{fingerprint['num_blocks']} decoder blocks: the plan was made for another model "
                f"({(self.fingerprint or {}).get('architecture', 'unknown')}); make a new plan for "
                "this one"
            )
        if self.fingerprint is None:
            return
        for key in ("architecture", "shape_digest"):
            mine, theirs = self.fingerprint.get(key), fingerprint.get(key)
            if mine != theirs:
                raise PlanError(
                    f"plan made for a model with {key}={mine!r}, but this model has {theirs!r}: "
                    "make a new plan for this model (e.g. `msp prune --allocation ...`)"
                )

    # ------------------------------------------------------------------ reading
    @property
    def num_blocks(self) -> int:
        return len(self.levels) // len(self.unit_names or ["block"])

    @property
    def layout(self) -> UnitLayout:
        """The plan's units as a `units.UnitLayout` (a block plan: blocks of weight 1)."""
        names = tuple(self.unit_names or ["block"])
        return UnitLayout(self.granularity, names, self.num_blocks, tuple(self.unit_weights or [1] * len(self.levels)))

    def block_levels(self, block: int) -> dict[str, int]:
        """{unit name: level} of one block (``{"block": level}`` for a block plan)."""
        return self.layout.block_levels(self.levels, block)

    def linear_levels(self, block: int, linear_names: Any) -> dict[str, int]:
        """{linear name: level} for the linears of one block (names relative to the block)."""
        try:
            return self.layout.linear_levels(self.levels, block, list(linear_names))
        except KeyError as missing:
            raise PlanError(f"block {block} has linear(s) the plan has no level for ({missing}): the plan was made "
                            "for another model") from None

    def levels_by_unit(self) -> dict[str, list[int]]:
        """{unit name: its level in every block} (``{"block": levels}`` for a block plan)."""
        names = self.unit_names or ["block"]
        return {name: self.levels[i :: len(names)] for i, name in enumerate(names)}

    def fully_pruned(self, block: int) -> bool:
        """Every unit of the block at level M."""
        return all(level == self.m for level in self.block_levels(block).values())

    def check_units(self, layout: UnitLayout) -> None:
        """Raise a `PlanError` unless the plan's units are those of ``layout`` (read from a model)."""
        mine = self.layout
        if mine != layout:
            other_sizes = ", other sizes" if mine.weights != layout.weights else ""
            raise PlanError(f"the plan's units ({mine.granularity}: {list(mine.names)} x {mine.num_blocks} blocks) are "
                            f"not this model's ({layout.granularity}: {list(layout.names)} x {layout.num_blocks} "
                            f"blocks{other_sizes}): the plan was made for another model")

    @property
    def target_sparsity(self) -> float:
        """Target fraction of zeros in the pruned linears, e.g. 0.75 for 3:4."""
        return self.target / self.m

    def describe(self) -> str:
        if self.granularity == "block":
            levels = f"levels {self.levels}"
        else:
            levels = ", ".join(f"{name} levels {unit}" for name, unit in self.levels_by_unit().items())
        return f"{self.allocation} plan, {self.criterion}, target {nm_string(self.target, self.m)}, {levels}"

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.granularity == "block":  # a block plan's JSON is what it always was
            for key in ("granularity", "unit_names", "unit_weights"):
                del data[key]
        return stamp(data, PLAN_FORMAT_VERSION)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SparsityPlan":
        data = unstamp(data, "plan", PLAN_FORMAT_VERSION, PlanError, default=PLAN_FORMAT_VERSION)
        known = {"m", "target", "levels", "criterion", "allocation", "fingerprint", "metadata", "granularity",
                 "unit_names", "unit_weights"}
        unknown = set(data) - known
        if unknown:
            raise PlanError(f"unknown plan fields {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "SparsityPlan":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "SparsityPlan":
        return load_record(path, "plan", PlanError, cls.from_dict)
