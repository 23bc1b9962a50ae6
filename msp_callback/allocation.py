"""Ways to get a `SparsityPlan` for a model: one interface, one registry.

Every allocation takes the model, the target level N of M and the criterion name, and returns a
plan whose levels meet the budget exactly. The search-based and sensitivity-based allocations
(msp, fisher, owl) register here too (in `registry`, which settings validation reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .block_walk import BlockInputs, CalibrationError, collect_input_stats, walk_blocks
from .budget import round_to_budget, trace_levels
from .config import SearchSettings
from .criteria import get_criterion
from .distributed import reduce_traces, shard, world
from .models import block_linears, check_weights_in_memory, find_blocks, fingerprint, input_device
from .nm import to_out_in
from .offload import offload_of
from .plan import SparsityPlan
from .registry import ALLOCATIONS, register_allocation
from .search.runner import search_plan
from .sensitivity import fisher_traces


@register_allocation("uniform")
def uniform(model: nn.Module, n: int, m: int, criterion: str, **_: Any) -> SparsityPlan:
    """Every block at level N: the baseline MSP improves on."""
    return SparsityPlan.uniform(n, m, len(find_blocks(model)), criterion=criterion, fingerprint=fingerprint(model))


def _require(calibration: Sequence[Tensor] | None, allocation: str) -> Sequence[Tensor]:
    if not calibration:
        raise CalibrationError(f"allocation {allocation!r} needs calibration batches and none were given")
    return calibration


@torch.no_grad()
def outlier_ratios(model: nn.Module, calibration: Sequence[Tensor], threshold: float = 5.0, progress: bool = True) -> list[float]:
    """OWL's layerwise outlier ratio: the fraction of a block's Wanda scores |W| * ||X|| above
    ``threshold`` times their mean (dense model, dense inputs)."""
    wanda, ratios = get_criterion("wanda"), []

    def visit(index: int, block: nn.Module, inputs: BlockInputs) -> list[Tensor]:
        linears, outputs = block_linears(block), []
        stats = collect_input_stats(block, linears, inputs, wanda.statistic, outputs)
        scores = torch.cat([wanda.scores(to_out_in(mod, mod.weight).float(), stats[name]).flatten()
                            for name, mod in linears.items()])
        ratios.append(float((scores > threshold * scores.mean()).float().mean()))
        return outputs  # the block is unchanged: the walk reuses them

    walk_blocks(model, calibration, visit, desc="outlier ratios", progress=progress)
    return ratios


@register_allocation("owl")
def owl(model: nn.Module, n: int, m: int, criterion: str, calibration: Sequence[Tensor] | None = None,
        owl_lambda: float = 0.2, owl_threshold: float = 5.0, progress: bool = True, **_: Any) -> SparsityPlan:
    """Outlier-weighed layerwise sparsity (Yin et al., 2024): sparsity in [target - lambda,
    target + lambda], lower for blocks with more outliers, rounded to levels of M on budget.

    OWL's published lambda of 0.08 is finer than one level at M=4 (0.25) and would give the
    uniform plan there; the default 0.2 lets levels move by one step either way."""
    ratios = outlier_ratios(model, _require(calibration, "owl"), owl_threshold, progress)
    low, high = min(ratios), max(ratios)
    spread = [(r - low) / (high - low) * 2 * owl_lambda if high > low else 0.0 for r in ratios]
    mean = sum(spread) / len(spread)
    targets = [(n / m - (s - mean)) * m for s in spread]
    plan = SparsityPlan(m=m, target=n, levels=round_to_budget(targets, n, m, importance=ratios),
                        criterion=criterion, allocation="owl", fingerprint=fingerprint(model))
    plan.metadata.update(outlier_ratios=ratios, owl_lambda=owl_lambda, owl_threshold=owl_threshold)
    return plan


def block_traces(model: nn.Module, calibration: Sequence[Tensor], progress: bool = True) -> list[float]:
    """Per-block Fisher traces; in a distributed run each rank takes its share of the rows and
    the traces are averaged across ranks."""
    same_length = len({b.shape[-1] for b in calibration}) == 1
    mine = [shard(torch.cat(list(calibration)))] if same_length else list(calibration)[world()[0]::world()[1]] or list(calibration)[:1]
    # an offloaded model keeps activations bounded too: each block's are recomputed in backward
    result = fisher_traces(model, mine, progress=progress and world()[0] == 0,
                           gradient_checkpointing=offload_of(model) is not None)
    return reduce_traces(result.block_traces, result.num_micro_batches, input_device(model))


@register_allocation("fisher")
def fisher(model: nn.Module, n: int, m: int, criterion: str, calibration: Sequence[Tensor] | None = None,
           traces: Sequence[float] | None = None, trace_strength: float | None = None, progress: bool = True,
           search: SearchSettings | None = None, **_: Any) -> SparsityPlan:
    """Levels from Fisher traces alone, no search: higher trace, lower level (`trace_levels`).
    ``trace_strength`` defaults to the search settings' (``--trace-strength``)."""
    if trace_strength is None:
        trace_strength = (search or SearchSettings()).trace_strength
    traces = list(traces) if traces is not None else block_traces(model, _require(calibration, "fisher"), progress)
    plan = SparsityPlan(m=m, target=n, levels=trace_levels(traces, n, m, trace_strength), criterion=criterion,
                        allocation="fisher", fingerprint=fingerprint(model))
    plan.metadata.update(traces=traces, trace_strength=trace_strength)
    return plan


@register_allocation("msp")
def msp(model: nn.Module, n: int, m: int, criterion: str, calibration: Sequence[Tensor] | None = None,
        fitness_windows: Tensor | None = None, search: Any = None, seed: int = 0, progress: bool = True,
        traces: Sequence[float] | None = None, level_cache: Any = None, data_settings: dict[str, Any] | None = None,
        **_: Any) -> SparsityPlan:
    """The MSP evolutionary search (see `search.runner.search_plan`; ``level_cache`` lets several
    searches share one)."""
    calibration = _require(calibration, "msp")
    settings = search or SearchSettings()
    if fitness_windows is None:
        fitness_windows = torch.cat(list(calibration))
    if settings.init == "trace" and traces is None:
        traces = block_traces(model, calibration, progress)
    plan = search_plan(model, n, m, criterion, calibration, fitness_windows, settings, traces, seed, progress,
                       level_cache=level_cache, data_settings=data_settings)
    if traces is not None:
        plan.metadata["traces"] = list(traces)
    return plan


def make_plan(allocation: str, model: nn.Module, n: int, m: int, criterion: str, **context: Any) -> SparsityPlan:
    """Plan for ``model`` at target N:M with the named allocation; ``context`` carries what some
    allocations need (calibration batches, evaluator, search settings)."""
    try:
        fn = ALLOCATIONS[allocation]
    except KeyError:
        raise ValueError(f"unknown allocation {allocation!r}; available: {sorted(ALLOCATIONS)}") from None
    check_weights_in_memory(model)
    return fn(model, n, m, criterion, **context)
