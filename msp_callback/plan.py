"""`SparsityPlan`: the one artifact every stage meets at.

A plan records M, the target level N (weights pruned in every group of M, as in the paper:
"3:4" is 75% zeros), the importance criterion, and one level per decoder block. It is what an
allocation produces, what the pruner consumes, and what the CLI and export write as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .records import load_record, stamp, unstamp, write_json

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
    """Per-block N:M levels for one model.

    Attributes:
        m: group size M.
        target: target level N; the budget is exact: ``sum(levels) == target * len(levels)``
            (blocks are counted equally; see ``measured_sparsity`` for the parameter-weighted value).
        levels: weights pruned in every group of M, one entry per decoder block, each in 0..M.
        criterion: name of the importance criterion that prunes at these levels.
        allocation: how the levels were chosen (uniform, owl, fisher, msp, ...).
        fingerprint: the model the plan was made for (see ``models.fingerprint``).
        metadata: free-form provenance (settings, seed, fitness).
    """

    m: int
    target: int
    levels: list[int]
    criterion: str = "wanda"
    allocation: str = "uniform"
    fingerprint: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.levels = [int(level) for level in self.levels]
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(cls, n: int, m: int, num_blocks: int, **kwargs: Any) -> "SparsityPlan":
        """Every block at level ``n``."""
        return cls(m=m, target=n, levels=[n] * num_blocks, allocation="uniform", **kwargs)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        check_level_range(self.target, self.m)
        if not self.levels:
            raise PlanError("a plan needs at least one block level")
        bad = [(i, lv) for i, lv in enumerate(self.levels) if not 0 <= lv <= self.m]
        if bad:
            i, lv = bad[0]
            raise PlanError(f"block {i} has level {lv}, outside 0..M={self.m}")
        if sum(self.levels) != self.target * len(self.levels):
            raise PlanError(
                f"levels sum to {sum(self.levels)}, but the budget for {len(self.levels)} blocks "
                f"at target {nm_string(self.target, self.m)} is {self.target * len(self.levels)}"
            )

    def check_model(self, fingerprint: dict[str, Any]) -> None:
        """Raise a `PlanError` naming the difference if the plan was made for another model."""
        if len(self.levels) != fingerprint["num_blocks"]:
            raise PlanError(
                f"this plan has {len(self.levels)} block levels but the model has "
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
        return len(self.levels)

    @property
    def target_sparsity(self) -> float:
        """Target fraction of zeros in the pruned linears, e.g. 0.75 for 3:4."""
        return self.target / self.m

    def describe(self) -> str:
        return (
            f"{self.allocation} plan, {self.criterion}, target {nm_string(self.target, self.m)}, "
            f"levels {self.levels}"
        )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return stamp(asdict(self), PLAN_FORMAT_VERSION)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SparsityPlan":
        data = unstamp(data, "plan", PLAN_FORMAT_VERSION, PlanError, default=PLAN_FORMAT_VERSION)
        known = {"m", "target", "levels", "criterion", "allocation", "fingerprint", "metadata"}
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
