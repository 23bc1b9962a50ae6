"""Integer per-block levels from real-valued targets, meeting the budget exactly.

Shared by the allocations (OWL's outlier ratios, Fisher traces) and the search's trace
initialisation. Pure Python: a level counts the weights pruned in every group of M (0..M), and
the budget is ``sum(levels) == n * len(levels)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Individual = list[int]


def check_nm(n: int, m: int) -> None:
    """Raise ValueError unless M >= 1 and 0 <= N <= M."""
    if m < 1:
        raise ValueError(f"M must be at least 1, got M={m}")
    if not 0 <= n <= m:
        raise ValueError(f"target level N={n} must lie in 0..M={m} (N weights pruned of every M)")


def _standardised_log(traces: Sequence[float]) -> list[float]:
    """z-scores of log(trace); zero traces count as the smallest positive one, equal traces give 0."""
    if any(not math.isfinite(t) or t < 0 for t in traces):
        raise ValueError(f"traces must be finite and >= 0, got {list(traces)}")
    positive = [t for t in traces if t > 0]
    floor = min(positive) if positive else 1.0
    logs = [math.log(max(t, floor)) for t in traces]
    mean = sum(logs) / len(logs)
    std = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
    return [(x - mean) / std if std > 0 else 0.0 for x in logs]


def trace_levels(traces: Sequence[float], n: int, m: int, strength: float = 1.0) -> Individual:
    """Deterministic levels from per-block Fisher traces: higher trace -> lower level.

    Real targets ``N - strength * z`` (z the standardised log trace) are clipped to [0, M] and
    rounded; the budget is then met exactly by adding a level to the block furthest below its
    target (or removing one from the block furthest above it), one level at a time, with ties
    going to the less sensitive block on additions and the more sensitive block on removals. The
    result is monotone non-increasing in the trace.
    """
    check_nm(n, m)
    if not traces:
        raise ValueError("need at least one trace")
    if not (math.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be finite and >= 0, got {strength}")
    targets = [n - strength * z for z in _standardised_log(traces)]
    return round_to_budget(targets, n, m, importance=traces)


def round_to_budget(targets: Sequence[float], n: int, m: int, importance: Sequence[float]) -> Individual:
    """Integer levels near real-valued ``targets`` (clipped to [0, M]) meeting the budget exactly.

    After rounding half up, one level at a time is added to the block furthest below its target
    (ties: the least important) or removed from the block furthest above it (ties: the most
    important), so the result never gives a more important block a higher level.
    """
    check_nm(n, m)
    if len(targets) != len(importance) or not targets:
        raise ValueError(f"need one importance per target, got {len(importance)} for {len(targets)}")
    targets = [min(float(m), max(0.0, t)) for t in targets]
    levels = [math.floor(t + 0.5) for t in targets]
    budget = n * len(levels)
    while (total := sum(levels)) != budget:
        step = 1 if total < budget else -1
        eligible = [i for i, v in enumerate(levels) if 0 <= v + step <= m]
        # additions: largest residual, then least important; removals: smallest residual, then most important
        idx = min(eligible, key=lambda i: (-step * (targets[i] - levels[i]), step * importance[i], i))
        levels[idx] += step
    return levels


