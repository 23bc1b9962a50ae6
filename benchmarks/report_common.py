"""Shared pieces of the benchmark report: where the results are, reading one, number formats."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def fmt(x: float) -> str:
    return f"{x:,.2f}" if x < 1000 else f"{x:,.0f}"


def with_interval(row: dict) -> str:
    if "ppl_interval" not in row:
        return fmt(row["ppl"])
    low, high = row["ppl_interval"]
    return f"{fmt(row['ppl'])} ({fmt(low)}-{fmt(high)})"


def plot_links(name: str) -> list[str]:
    files = [f"{name}_levels.png", f"{name}_convergence.png"]
    return [""] + [f"![{f}](benchmarks/results/{f})" for f in files if (RESULTS / f).exists()] + [""]
