"""msp-callback: Mixed Sparsity Pruning (per-block N:M levels) for causal language models."""

from . import allocation, data  # noqa: F401  (allocation: registers the built-in allocations)
from .criteria import Criterion, get_criterion, register_criterion
from .plan import PlanError, SparsityPlan, nm_string, parse_nm
from .pruner import prune
from .saving import restore_masks

__version__ = "0.1.0"


def __getattr__(name: str):
    """`MSPCallback` (Lightning) and `MSPTrainerCallback` (transformers), imported on first use."""
    if name == "MSPCallback":
        from .integrations.lightning import MSPCallback

        return MSPCallback
    if name == "MSPTrainerCallback":
        from .integrations.hf import MSPTrainerCallback

        return MSPTrainerCallback
    raise AttributeError(f"module 'msp_callback' has no attribute {name!r}")

__all__ = [
    "Criterion",
    "MSPCallback",
    "MSPTrainerCallback",
    "PlanError",
    "SparsityPlan",
    "data",
    "get_criterion",
    "nm_string",
    "parse_nm",
    "prune",
    "register_criterion",
    "restore_masks",
]
