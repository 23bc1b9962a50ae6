"""Figures as PNG files. Each function takes data and a path, writes the PNG and returns the path.

Figures are drawn on a standalone Agg canvas (no pyplot), so nothing global such as the
matplotlib backend is touched and no window is ever opened.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .atomic_files import atomic_file


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_file(path) as staging:
        fig.savefig(staging, dpi=120, format="png")
    return Path(path)


def plot_sensitivity(result_or_traces: Any | Sequence[float], path: str | Path, title: str | None = None) -> Path:
    """Bar chart of the Fisher trace per block on a log axis, as in the paper's Figure 3.

    Takes a `SensitivityResult` (anything with ``block_traces``) or a sequence of traces."""
    traces = [float(v) for v in getattr(result_or_traces, "block_traces", result_or_traces)]
    fig = Figure(figsize=(max(4.0, 0.25 * len(traces) + 2.0), 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(traces)), traces, color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel("block")
    ax.set_ylabel("Fisher trace")
    ax.set_title(title or "Layer-wise sensitivity (trace of the Fisher information)")
    ax.set_xlim(-0.6, len(traces) - 0.4)
    return _save(fig, path)


def plot_levels(plans: dict[str, Sequence[int]], m: int, path: str | Path, title: str | None = None) -> Path:
    """Level (pruned of M) per block for one or more plans, as in the paper's Figure 8."""
    fig = Figure(figsize=(8.0, 3.5), layout="constrained")
    ax = fig.add_subplot()
    count = max(1, len(plans))
    width = 0.8 / count
    for k, (name, levels) in enumerate(plans.items()):
        ax.bar([i + (k - (count - 1) / 2) * width for i in range(len(levels))], levels, width, label=name)
    ax.set_xlabel("block")
    ax.set_ylabel(f"level (pruned of {m})")
    ax.set_ylim(0, m + 0.2)
    ax.set_yticks(range(m + 1))
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title or "Per-block N:M levels")
    return _save(fig, path)


def plot_convergence(history: Sequence[dict[str, Any]] | dict[str, Sequence[dict[str, Any]]], path: str | Path,
                     title: str | None = None, x: str = "generation") -> Path:
    """Best and mean fitness per generation (log scale), as in the paper's Figure 4. Pass one
    search's history, or ``{name: history}`` to compare searches (best solid, mean dashed).
    ``x="evaluations"`` puts the cumulative number of fitness evaluations on the x axis, the fair
    axis when the searches spend different budgets per generation; ``x="cost"`` the cumulative
    cost in full-evaluation units (histories written with `search.fidelity.CostMeter`)."""
    if x not in ("generation", "evaluations", "cost"):
        raise ValueError(f"x must be 'generation', 'evaluations' or 'cost', got {x!r}")
    runs = history if isinstance(history, dict) else {"": history}
    fig = Figure(figsize=(5.5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for k, (name, hist) in enumerate(runs.items()):
        gens = ([h["generation"] for h in hist] if x == "generation"
                else list(itertools.accumulate(h[x] for h in hist)))
        color = f"C{k}"
        label = f"{name} " if name else ""
        ax.plot(gens, [h["best_fitness"] for h in hist], marker="o", color=color, label=f"{label}best")
        ax.plot(gens, [h["mean_fitness"] for h in hist], ls="--", color=color, label=f"{label}population mean")
    ax.set_yscale("log")
    ax.set_xlabel({"generation": "generation", "evaluations": "fitness evaluations",
                   "cost": "fitness cost (full evaluations)"}[x])
    ax.set_ylabel("fitness")
    ax.legend(fontsize="small")
    ax.set_title(title or "Search convergence")
    return _save(fig, path)
