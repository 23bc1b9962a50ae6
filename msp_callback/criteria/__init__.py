"""Plug-and-play importance criteria behind one registry."""

from . import magnitude, sparsegpt, wanda  # noqa: F401  (register the built-ins)
from .base import Criterion, InputStats
from .registry import CRITERIA, get_criterion, register_criterion

__all__ = ["Criterion", "InputStats", "CRITERIA", "get_criterion", "register_criterion"]
