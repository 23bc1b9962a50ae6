"""Name -> criterion class, so users can plug in their own with `register_criterion`."""

from __future__ import annotations

from typing import Any

from .base import Criterion

CRITERIA: dict[str, type[Criterion]] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: make ``cls`` available as ``get_criterion(cls.name)``."""
    if not getattr(cls, "name", None):
        raise ValueError(f"{cls.__name__} needs a `name` class attribute")
    CRITERIA[cls.name] = cls
    return cls


def get_criterion(criterion: str | Criterion, **kwargs: Any) -> Criterion:
    """A criterion instance from its name (or pass one through)."""
    if isinstance(criterion, Criterion):
        return criterion
    try:
        return CRITERIA[criterion](**kwargs)
    except KeyError:
        raise ValueError(
            f"unknown criterion {criterion!r}; available: {sorted(CRITERIA)} "
            "(add your own with msp_callback.criteria.register_criterion)"
        ) from None
