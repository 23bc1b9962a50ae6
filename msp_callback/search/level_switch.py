"""A (1+λ) level-switch search over unit levels (EvoPress-style), budget exact by parameter count.

An individual holds one level per unit (a block, its attention or MLP linears, or one linear; see
`msp_callback.units`), each in 0..M, with ``sum(weight * level) == n * sum(weight)``. Each generation
makes ``offspring`` children of the one parent. A child is the parent after 1 to ``max_switches``
level switches (their number is the smaller of two uniform draws, so one switch is the most common).
A switch raises unit u by ``w_v / g`` levels and lowers unit v by ``w_u / g`` (``g = gcd(w_u, w_v)``),
which keeps the budget exact; between units of one size it is one level up and one down. A child equal
to the parent or to any individual scored before is drawn again (duplicate rejection).

Selection is in steps: every child is scored by the cheap ``screen`` (few fitness tokens), the best
``survivors`` by ``full`` (the whole fitness split); the parent is replaced only by a child with a lower
full fitness (elitist). Without a screen every child is scored in full. Generation 0 selects the
parent the same way among the starting individuals (e.g. uniform and the paper's initial population).

Pure Python integers; all randomness from the search's ``random.Random``, so runs are reproducible and
resumable from `state_dict`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..budget import check_nm
from .evolution import _rng_state_from_json, _rng_state_to_json
from .loop import GenerationLoop

Individual = list[int]
Evaluate = Callable[[list[Individual]], Sequence[float]]


def check_units(levels: Sequence[int], n: int, m: int, weights: Sequence[int]) -> None:
    """Raise ValueError unless ``levels`` has one level in 0..M per weight and meets the budget exactly."""
    if len(levels) != len(weights):
        raise ValueError(f"individual has {len(levels)} levels, expected one per unit ({len(weights)})")
    bad = [(i, v) for i, v in enumerate(levels) if not 0 <= v <= m]
    if bad:
        raise ValueError(f"levels must lie in 0..{m}; (unit, level) out of range: {bad[:5]}")
    spent = sum(w * v for w, v in zip(weights, levels))
    if spent != n * sum(weights):
        raise ValueError(f"individual {list(levels)} breaks the budget: weighted sum {spent} != N x weights "
                         f"= {n * sum(weights)}")


def switch(levels: Sequence[int], weights: Sequence[int], m: int, rng: random.Random, tries: int = 100
           ) -> Individual | None:
    """``levels`` after one budget-keeping level switch between two random units, or None when
    ``tries`` random pairs allowed none (every unit at a bound, or sizes too far apart for M)."""
    units = len(levels)
    if units < 2:
        return None
    for _ in range(tries):
        up, down = rng.sample(range(units), 2)
        g = math.gcd(weights[up], weights[down])
        rise, fall = weights[down] // g, weights[up] // g
        if levels[up] + rise <= m and levels[down] - fall >= 0:
            out = list(levels)
            out[up] += rise
            out[down] -= fall
            return out
    return None


def mutate_switches(levels: Sequence[int], weights: Sequence[int], m: int, max_switches: int,
                    rng: random.Random) -> Individual:
    """The parent after ``min(U(1, max_switches), U(1, max_switches))`` switches."""
    count = min(rng.randint(1, max_switches), rng.randint(1, max_switches))
    out = list(levels)
    for _ in range(count):
        moved = switch(out, weights, m, rng)
        if moved is None:
            break
        out = moved
    return out


class LevelSwitchSearch(GenerationLoop):
    """(1+λ) search with level-switch mutations, multi-step selection and duplicate rejection.

    ``full`` and ``screen`` score lists of individuals (lower is better); ``screen_tokens`` and
    ``full_tokens`` price them so that `cost` counts full-evaluation units. The search's state
    (parent, scores, generation, RNG) round-trips through `state_dict`.
    """

    _MATCHED = ("n", "m", "weights", "offspring", "survivors", "max_switches", "seed")

    def __init__(self, n: int, m: int, weights: Sequence[int], *, offspring: int = 8, survivors: int = 2,
                 generations: int = 10, max_switches: int = 3, seed: int = 0,
                 starts: Sequence[Sequence[int]] | None = None, full: Evaluate | None = None,
                 screen: Evaluate | None = None, screen_tokens: int = 0, full_tokens: int = 1) -> None:
        check_nm(n, m)
        if offspring < 1 or survivors < 1 or max_switches < 1 or generations < 0:
            raise ValueError(f"offspring, survivors and max_switches must be >= 1 and generations >= 0; got "
                             f"{offspring}, {survivors}, {max_switches}, {generations}")
        self.settings: dict[str, Any] = dict(n=n, m=m, weights=[int(w) for w in weights], offspring=offspring,
                                             survivors=survivors, generations=generations,
                                             max_switches=max_switches, seed=seed)
        self.starts = list({tuple(s): list(s) for s in (starts or [[n] * len(weights)])}.values())  # distinct
        for start in self.starts:
            self._check(start)
        self.full, self.screen = full, screen
        self.screen_tokens, self.full_tokens = screen_tokens, full_tokens
        self.rng = random.Random(seed)
        self.cache: dict[tuple[int, ...], float] = {}  # full fitness of every individual scored in full
        self.screened: dict[tuple[int, ...], float] = {}  # screen fitness of every child screened
        self.parent: Individual = []
        self.generation = -1
        self.evaluations = 0  # full-fidelity evaluations
        self.screenings = 0
        self.history: list[dict[str, Any]] = []

    # -- reading ---------------------------------------------------------------------------------
    @property
    def weights(self) -> list[int]:
        return self.settings["weights"]

    @property
    def best(self) -> tuple[Individual, float]:
        """(levels, full fitness) of the parent: the best individual scored in full so far."""
        if not self.initialized:
            raise RuntimeError("search is not initialised")
        return list(self.parent), self.cache[tuple(self.parent)]

    @property
    def cost(self) -> float:
        """Evaluations so far in full-evaluation units (screenings priced by their tokens)."""
        return self.evaluations + self.screenings * self.screen_tokens / self.full_tokens

    def _check(self, levels: Sequence[int]) -> None:
        check_units(levels, self.n, self.m, self.weights)

    # -- scoring ---------------------------------------------------------------------------------
    def _score_full(self, individuals: Sequence[Individual]) -> int:
        unique = {tuple(ind): list(ind) for ind in individuals if tuple(ind) not in self.cache}
        return self._score(self.full, list(unique.values()))

    def _children(self) -> list[Individual]:
        """Up to ``offspring`` distinct children never scored before (fewer when the neighbourhood
        runs out)."""
        seen = set(self.cache) | set(self.screened)
        children: list[Individual] = []
        for _ in range(20 * self.settings["offspring"]):
            if len(children) == self.settings["offspring"]:
                break
            child = mutate_switches(self.parent, self.weights, self.m, self.settings["max_switches"], self.rng)
            if tuple(child) not in seen:
                seen.add(tuple(child))
                children.append(child)
        return children

    def _record(self, started: float, evaluated: int, screened: int, scored: Sequence[float]) -> None:
        levels, fit = self.best
        finite = [s for s in scored if math.isfinite(s)]
        self.history.append(dict(generation=self.generation, best_fitness=fit,
                                 mean_fitness=sum(finite) / len(finite) if finite else fit, best_levels=levels,
                                 evaluations=evaluated, screened=screened, seconds=time.perf_counter() - started))

    # -- search ----------------------------------------------------------------------------------
    def _select(self, candidates: Sequence[Individual]) -> tuple[list[Individual], int, int]:
        """Screen ``candidates`` (when there are more than ``survivors``) and score the best in full:
        (finalists, full evaluations made, screenings made)."""
        finalists, screened = list(candidates), 0
        if self.screen is not None and len(candidates) > self.settings["survivors"]:
            rough = list(self.screen([list(c) for c in candidates]))
            for candidate, score in zip(candidates, rough):
                self.screened[tuple(candidate)] = float(score)
            screened = len(candidates)
            self.screenings += screened
            order = sorted(range(len(candidates)), key=lambda i: (math.isnan(rough[i]), rough[i]))
            finalists = [list(candidates[i]) for i in order[: self.settings["survivors"]]]
        return finalists, self._score_full(finalists), screened

    def initialize(self) -> None:
        """Select among the starting individuals as among children; the best scored in full
        becomes the parent (generation 0)."""
        if self.initialized:
            raise RuntimeError("search is already initialised")
        started = time.perf_counter()
        finalists, evaluated, screened = self._select(self.starts)
        self.parent = list(min(finalists, key=lambda s: self.cache[tuple(s)]))
        self.generation = 0
        self._record(started, evaluated, screened, [self.cache[tuple(s)] for s in finalists])

    def step(self) -> None:
        """One generation: children by switches, screened, the best scored in full, the parent kept
        unless a child beats it."""
        if not self.initialized:
            raise RuntimeError("call initialize() before step()")
        started = time.perf_counter()
        finalists, evaluated, screened = self._select(self._children())
        scores = [self.cache[tuple(c)] for c in finalists]
        best = min(range(len(finalists)), key=lambda i: scores[i], default=None)
        if best is not None and scores[best] < self.cache[tuple(self.parent)]:
            self.parent = list(finalists[best])
        self.generation += 1
        self._record(started, evaluated, screened, scores)

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot of the whole search, RNG included."""
        return dict(settings=dict(self.settings), kind="level-switch", parent=list(self.parent),
                    cache=[[list(k), v] for k, v in self.cache.items()],
                    screened=[[list(k), v] for k, v in self.screened.items()], evaluations=self.evaluations,
                    screenings=self.screenings, generation=self.generation,
                    history=[dict(h, best_levels=list(h["best_levels"])) for h in self.history],
                    rng_state=_rng_state_to_json(self.rng.getstate()))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict`; settings must match (``generations`` may differ)."""
        if state.get("kind") != "level-switch":
            raise ValueError("checkpoint belongs to a different search (not the level-switch search)")
        self._check_saved_settings(state["settings"])
        self.cache = {tuple(k): float(v) for k, v in state["cache"]}
        self.screened = {tuple(k): float(v) for k, v in state["screened"]}
        parent = list(state["parent"])
        self._check(parent)
        if tuple(parent) not in self.cache:
            raise ValueError(f"checkpoint parent {parent} has no cached fitness")
        self.parent = parent
        self.evaluations, self.screenings = int(state["evaluations"]), int(state["screenings"])
        self.generation = int(state["generation"])
        self.history = [dict(h, best_levels=list(h["best_levels"])) for h in state["history"]]
        self.rng.setstate(_rng_state_from_json(state["rng_state"]))
