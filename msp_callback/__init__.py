"""msp-callback: Mixed Sparsity Pruning (per-block N:M levels) for causal language models."""

from . import data
from .criteria import Criterion, get_criterion, register_criterion
from .plan import PlanError, SparsityPlan, nm_string, parse_nm
from .pruner import prune

__version__ = "0.1.0"

__all__ = [
    "Criterion",
    "PlanError",
    "SparsityPlan",
    "data",
    "get_criterion",
    "nm_string",
    "parse_nm",
    "prune",
    "register_criterion",
]
