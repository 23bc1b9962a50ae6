"""Multi-fidelity fitness: screen every new individual on a cheap split, score only the best on
the full fitness split.

A generation's new individuals are first scored on a few fitness windows (low fidelity); the best
``keep`` fraction of them (at least one) is then scored on the whole fitness split, and only those
scores are used. The others get +inf: they take part in the generation but are never chosen as
parents or as the answer, provided ``keep`` is at least the search's parent fraction (one half in
`EvolutionarySearch`; the runner checks). An individual rejected once is not screened again: the
search caches fitness by levels. With one window of four as the screen and ``keep=0.5`` a generation
costs 1/4 + 1/2 = 3/4 of the single-fidelity one; `cost` counts it in full-evaluation units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Evaluate = Callable[[Sequence[Sequence[int]]], list[float]]


class MultiFidelityEvaluate:
    """``screen`` and ``full`` are batch fitness functions (lower is better) over the same model;
    ``screen_tokens`` / ``full_tokens`` price their evaluations for `cost`."""

    def __init__(self, screen: Evaluate, full: Evaluate, keep: float, screen_tokens: int, full_tokens: int) -> None:
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be in (0, 1], the fraction of screened individuals scored fully; got {keep}")
        self.screen, self.full, self.keep = screen, full, keep
        self.screen_tokens, self.full_tokens = screen_tokens, full_tokens
        self.screened = 0
        self.scored = 0

    def __call__(self, individuals: Sequence[Sequence[int]]) -> list[float]:
        if not individuals:
            return []
        rough = self.screen(individuals)
        count = max(1, math.ceil(self.keep * len(individuals)))
        chosen = sorted(range(len(individuals)), key=lambda i: (math.isnan(rough[i]), rough[i]))[:count]
        scores = [math.inf] * len(individuals)
        for i, score in zip(chosen, self.full([individuals[i] for i in chosen])):
            scores[i] = score
        self.screened += len(individuals)
        self.scored += count
        return scores

    @property
    def cost(self) -> float:
        """Evaluations so far, in units of one full-fidelity evaluation (priced by tokens)."""
        return self.scored + self.screened * self.screen_tokens / self.full_tokens


class CostMeter:
    """Search callback: writes each generation's evaluation cost, in full-evaluation units, into
    the search history as ``cost`` (kept by checkpoints, so the total survives a resume)."""

    def __init__(self, search: Any, evaluate: Evaluate) -> None:
        self.search, self.evaluate = search, evaluate
        self._last = self._spent()

    def _spent(self) -> float:
        if isinstance(self.evaluate, MultiFidelityEvaluate):
            return self.evaluate.cost
        if hasattr(self.search, "cost"):  # a search that prices its own screenings (level-switch)
            return float(self.search.cost)
        return float(self.search.evaluations)

    def __call__(self, search: Any) -> None:
        now = self._spent()
        search.history[-1]["cost"] = now - self._last
        self._last = now

    @property
    def total(self) -> float:
        return sum(h.get("cost", h["evaluations"]) for h in self.search.history)
