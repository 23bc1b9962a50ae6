"""The allocations by name, for the settings that name one.

A leaf module: `config` checks an allocation's name here without importing the allocations
themselves (they import the search, which imports `config`). `allocation` registers the built-in
ones, and the package imports it on load, so the names are always there. (Criteria keep their
registry in `criteria.registry`.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Allocation = Callable[..., Any]  # (model, n, m, criterion, **context) -> SparsityPlan
ALLOCATIONS: dict[str, Allocation] = {}


def register_allocation(name: str) -> Callable[[Allocation], Allocation]:
    """Decorator: make an allocation function available as ``allocation=name``."""
    def wrap(fn: Allocation) -> Allocation:
        ALLOCATIONS[name] = fn
        return fn

    return wrap
