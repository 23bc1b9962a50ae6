"""Ways to get a `SparsityPlan` for a model: one interface, one registry.

Every allocation takes the model, the target level N of M and the criterion name, and returns a
plan whose levels meet the budget exactly. The search-based and sensitivity-based allocations
(msp, fisher, owl) register here too when they are available.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .models import find_blocks, fingerprint
from .plan import SparsityPlan

Allocation = Callable[..., SparsityPlan]
ALLOCATIONS: dict[str, Allocation] = {}


def register_allocation(name: str) -> Callable[[Allocation], Allocation]:
    def wrap(fn: Allocation) -> Allocation:
        ALLOCATIONS[name] = fn
        return fn

    return wrap


@register_allocation("uniform")
def uniform(model: nn.Module, n: int, m: int, criterion: str, **_: Any) -> SparsityPlan:
    """Every block at level N: the baseline MSP improves on."""
    return SparsityPlan.uniform(n, m, len(find_blocks(model)), criterion=criterion, fingerprint=fingerprint(model))


def make_plan(allocation: str, model: nn.Module, n: int, m: int, criterion: str, **context: Any) -> SparsityPlan:
    """Plan for ``model`` at target N:M with the named allocation; ``context`` carries what some
    allocations need (calibration batches, evaluator, search settings)."""
    try:
        fn = ALLOCATIONS[allocation]
    except KeyError:
        raise ValueError(f"unknown allocation {allocation!r}; available: {sorted(ALLOCATIONS)}") from None
    return fn(model, n, m, criterion, **context)
