"""Pruning-oriented evolutionary search over per-block N:M levels (paper Sec. 3.2, App. A).

An *individual* is a list of ints, one level per decoder block; a level counts the weights
pruned in every group of M (0..M). The budget is exact: ``sum(levels) == n * num_blocks``.
Lower fitness (perplexity) is better.

Everything here is pure Python integers; all randomness comes from a ``random.Random`` that is
passed in (functions) or owned by the search (`EvolutionarySearch`), so runs are reproducible and
resumable from a JSON checkpoint.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..budget import check_nm, trace_levels
from .loop import GenerationLoop

__all__ = [
    "EvolutionarySearch",
    "INITIALISATIONS",
    "check_individual",
    "crossover",
    "mutate",
    "random_population",
    "repair",
    "sensitivity_population",
    "trace_population",
]

Individual = list[int]
Evaluate = Callable[[list[Individual]], Sequence[float]]
INITIALISATIONS = ("random", "sensitivity", "trace")


# ----------------------------------------------------------------------------------------------
# Validation


def check_individual(levels: Sequence[int], n: int, m: int, num_blocks: int | None = None) -> None:
    """Raise ValueError unless ``levels`` has every level in 0..M and meets the budget exactly."""
    if num_blocks is not None and len(levels) != num_blocks:
        raise ValueError(f"individual has {len(levels)} levels, expected one per block ({num_blocks})")
    bad = [(i, v) for i, v in enumerate(levels) if not 0 <= v <= m]
    if bad:
        raise ValueError(f"levels must lie in 0..{m}; (block, level) out of range: {bad[:5]}")
    if sum(levels) != n * len(levels):
        raise ValueError(
            f"individual {list(levels)} breaks the budget: sum {sum(levels)} != N*blocks = {n * len(levels)}"
        )


def _check_levels_in_range(levels: Sequence[int], m: int) -> None:
    if any(not 0 <= v <= m for v in levels):
        raise ValueError(f"levels must lie in 0..{m}, got {list(levels)}")


# ----------------------------------------------------------------------------------------------
# Exact uniform sampling of bounded compositions (shared by the random and sensitivity inits)


def _composition_counts(parts: int, total: int, bound: int) -> list[list[int]]:
    """``counts[j][s]``: number of ways ``j`` values in 0..bound sum to ``s`` (s <= total)."""
    counts = [[1] + [0] * total]
    for _ in range(parts):
        prev, prefix = counts[-1], [0]
        for c in prev:
            prefix.append(prefix[-1] + c)
        counts.append([prefix[s + 1] - prefix[max(0, s - bound)] for s in range(total + 1)])
    return counts


def _pick(weights: Sequence[int], rng: random.Random) -> int:
    """Index drawn with probability proportional to the (exact, integer) ``weights``."""
    r = rng.randrange(sum(weights))
    for i, w in enumerate(weights):
        if r < w:
            return i
        r -= w
    raise AssertionError("unreachable")


def _sample_composition(counts: list[list[int]], parts: int, total: int, bound: int,
                        rng: random.Random) -> Individual:
    """A uniformly random vector of ``parts`` values in 0..bound summing to ``total``."""
    out = []
    for j in range(parts, 0, -1):
        v = _pick([counts[j - 1][total - v] for v in range(min(bound, total) + 1)], rng)
        out.append(v)
        total -= v
    return out


# ----------------------------------------------------------------------------------------------
# Operators


def repair(levels: Sequence[int], n: int, m: int, rng: random.Random) -> Individual:
    """Algorithm 4's adjustment: nudge random blocks by one level until the budget is exact.

    Under budget a random block below M gains a level; over budget a random block above 0 loses
    one. Drawing the block among the eligible ones equals the paper's "pick any index, skip if it
    cannot move" loop in distribution, and ends after exactly ``|sum - n*len|`` moves.
    """
    check_nm(n, m)
    _check_levels_in_range(levels, m)
    out, target = list(levels), n * len(levels)
    total = sum(out)
    while total != target:
        step = 1 if total < target else -1
        idx = rng.choice([i for i, v in enumerate(out) if 0 <= v + step <= m])
        out[idx] += step
        total += step
    return out


def crossover(p1: Sequence[int], p2: Sequence[int], n: int, m: int,
              rng: random.Random) -> tuple[Individual, Individual]:
    """Algorithm 4: single-point crossover at a point in [1, L-1], then `repair` both children.

    With one block there is no crossover point and the children are copies of the parents.
    """
    if len(p1) != len(p2):
        raise ValueError(f"parents differ in length: {len(p1)} vs {len(p2)}")
    if len(p1) < 2:
        return list(p1), list(p2)
    point = rng.randint(1, len(p1) - 1)
    c1 = list(p1[:point]) + list(p2[point:])
    c2 = list(p2[:point]) + list(p1[point:])
    return repair(c1, n, m, rng), repair(c2, n, m, rng)


def mutate(ind: Sequence[int], rate: float, n: int, m: int, rng: random.Random) -> Individual:
    """Algorithm 5: with probability ``rate`` resample two distinct blocks, keeping their sum.

    The paper redraws both levels uniformly in 0..M until the budget holds again; its outcome is
    uniform over the feasible pairs, so the first new level is drawn uniformly from
    ``max(0, s-M)..min(M, s)`` (``s`` the pair's sum) and the second is ``s`` minus it.
    Returns a new list; ``ind`` is left untouched.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mutation rate must lie in [0, 1], got {rate}")
    check_individual(ind, n, m)
    out = list(ind)
    if len(out) < 2 or rng.random() >= rate:
        return out
    i, j = rng.sample(range(len(out)), 2)
    s = out[i] + out[j]
    out[i] = rng.randint(max(0, s - m), min(m, s))
    out[j] = s - out[i]
    return out


# ----------------------------------------------------------------------------------------------
# Initialisations


def _check_population_args(size: int, num_blocks: int, n: int, m: int) -> None:
    check_nm(n, m)
    if size < 0:
        raise ValueError(f"population size must be >= 0, got {size}")
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")


def random_population(size: int, num_blocks: int, n: int, m: int, rng: random.Random) -> list[Individual]:
    """Algorithm 2: individuals uniformly random among all that meet the budget.

    The paper draws every level uniformly in 0..M and rejects until the sum matches, which is
    astronomically slow for tens of blocks. We sample the *same* distribution exactly (uniform
    over level vectors in 0..M with sum ``n*num_blocks``) by counting bounded compositions with a
    small dynamic programme and drawing level by level; no rejection, no repair bias.
    """
    _check_population_args(size, num_blocks, n, m)
    total = n * num_blocks
    counts = _composition_counts(num_blocks, total, m)
    return [_sample_composition(counts, num_blocks, total, m, rng) for _ in range(size)]


def front_blocks(num_blocks: int) -> int:
    """Number of front (sensitive) blocks in the sensitivity init: ``max(1, round(L/5))``."""
    return max(1, round(num_blocks / 5))


def sensitivity_population(size: int, num_blocks: int, n: int, m: int,
                           rng: random.Random) -> list[Individual]:
    """Algorithm 3: the front ~1/5 of blocks at N or N-1, deeper blocks at or above N.

    Reading: front deltas are in {0, 1} (front level ``N - delta``); deeper deltas are in
    0..M-N (level ``N + delta``; the paper writes 0..M-N-1, which would force the uniform plan at
    3:4, while its own example [2,3,4,3,3] at 3:4 uses delta = M-N); the deeper deltas sum to the
    front's total, so the budget is exact. Like the paper's rejection loops, the front vector is
    uniform on {0,1}^k subject to its sum fitting the deeper capacity ``(L-k)(M-N)``, and the deeper
    vector is uniform among those with that sum; both are sampled directly. Degenerate budgets
    (N = 0, N = M) and a single block give the uniform individual.
    """
    _check_population_args(size, num_blocks, n, m)
    k = front_blocks(num_blocks)
    deep, room = num_blocks - k, m - n
    if n == 0 or room == 0 or deep == 0:
        return [[n] * num_blocks for _ in range(size)]
    max_front = min(k, deep * room)
    front_counts = _composition_counts(k, max_front, 1)
    deep_counts = _composition_counts(deep, max_front, room)
    population = []
    for _ in range(size):
        s = _pick(front_counts[k], rng)
        front = _sample_composition(front_counts, k, s, 1, rng)
        deeper = _sample_composition(deep_counts, deep, s, room, rng)
        population.append([n - d for d in front] + [n + d for d in deeper])
    return population


def trace_population(traces: Sequence[float], size: int, n: int, m: int, rng: random.Random,
                     strength: float = 1.0) -> list[Individual]:
    """`trace_levels` plus mutated copies of it: copy ``i`` gets ``min(i, L)`` forced mutations."""
    base = trace_levels(traces, n, m, strength)
    _check_population_args(size, len(base), n, m)
    population = []
    for i in range(size):
        ind = base
        for _ in range(min(i, len(base))):
            ind = mutate(ind, 1.0, n, m, rng)
        population.append(list(ind))
    return population


# ----------------------------------------------------------------------------------------------
# The search


def _sort_key(fitness: float) -> float:
    return math.inf if math.isnan(fitness) else fitness


def _rng_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_json(state: Sequence) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class EvolutionarySearch(GenerationLoop):
    """Algorithm 1 with its whole state in one object, so it can be checkpointed and resumed.

    Generation 0 is the initial population. Every later generation keeps the better half of the
    population unchanged (elitism) and fills the rest with children of random parent pairs
    (crossover, then mutation). Fitnesses are cached by level tuple: an individual seen before is
    never evaluated again. ``evaluate`` receives a batch of new individuals and returns their
    fitnesses (lower is better), so a caller may spread one generation over several workers.
    """

    _MATCHED = ("n", "m", "num_blocks", "population_size", "mutation_rate", "seed", "init",
                "traces", "trace_strength")

    def __init__(self, n: int, m: int, num_blocks: int, *, population_size: int = 20,
                 generations: int = 20, mutation_rate: float = 0.5, seed: int = 0,
                 init: str = "sensitivity", traces: Sequence[float] | None = None,
                 trace_strength: float = 1.0, evaluate: Evaluate | None = None) -> None:
        self.settings: dict[str, Any] = dict(
            n=n, m=m, num_blocks=num_blocks, population_size=population_size, generations=generations,
            mutation_rate=mutation_rate, seed=seed, init=init,
            traces=None if traces is None else [float(t) for t in traces], trace_strength=trace_strength,
        )
        self._validate_settings()
        self.evaluate = evaluate
        self.rng = random.Random(seed)
        self.population: list[Individual] = []
        self.cache: dict[tuple[int, ...], float] = {}
        self.evaluations = 0
        self.generation = -1  # -1: not initialised; 0: initial population evaluated
        self.history: list[dict[str, Any]] = []

    # -- settings ------------------------------------------------------------------------------

    def _validate_settings(self) -> None:
        s = self.settings
        check_nm(s["n"], s["m"])
        if s["num_blocks"] < 1:
            raise ValueError(f"num_blocks must be >= 1, got {s['num_blocks']}")
        if s["population_size"] < 2:
            raise ValueError(f"population_size must be >= 2, got {s['population_size']}")
        if s["generations"] < 0:
            raise ValueError(f"generations must be >= 0, got {s['generations']}")
        if not 0.0 <= s["mutation_rate"] <= 1.0:
            raise ValueError(f"mutation_rate must lie in [0, 1], got {s['mutation_rate']}")
        if s["init"] not in INITIALISATIONS:
            raise ValueError(f"unknown init {s['init']!r}; choose one of {INITIALISATIONS}")
        if s["init"] == "trace" and s["traces"] is None:
            raise ValueError("init='trace' needs the per-block traces")
        if s["traces"] is not None and len(s["traces"]) != s["num_blocks"]:
            raise ValueError(f"got {len(s['traces'])} traces for {s['num_blocks']} blocks")

    # -- evaluation ------------------------------------------------------------------------------

    def _check(self, ind: Sequence[int]) -> None:
        check_individual(ind, self.n, self.m, self.settings["num_blocks"])

    def _evaluate(self, individuals: Sequence[Individual]) -> int:
        """Fill the cache for ``individuals``; returns how many real evaluations were made."""
        new: list[Individual] = []
        seen = set(self.cache)
        for ind in individuals:
            self._check(ind)
            if tuple(ind) not in seen:
                seen.add(tuple(ind))
                new.append(list(ind))
        return self._score(self.evaluate, new)

    def fitness(self, ind: Sequence[int]) -> float:
        """Cached fitness of an individual already evaluated."""
        return self.cache[tuple(ind)]

    def _ranked(self) -> list[Individual]:
        """Current population, best first (stable, so ties keep their order)."""
        return sorted(self.population, key=lambda ind: _sort_key(self.fitness(ind)))

    def _record(self, new_evaluations: int, started: float) -> None:
        # mean over finite fitnesses: a multi-fidelity screen gives the individuals it rejects +inf
        fits = [f for f in (self.fitness(ind) for ind in self.population) if math.isfinite(f)]
        best_levels, best_fit = self.best
        self.history.append(dict(
            generation=self.generation, best_fitness=best_fit,
            mean_fitness=sum(fits) / len(fits) if fits else math.inf,
            best_levels=best_levels, evaluations=new_evaluations, seconds=time.perf_counter() - started,
        ))

    # -- evolution -------------------------------------------------------------------------------

    def _initial_population(self) -> list[Individual]:
        s = self.settings
        size, blocks, n, m = s["population_size"], s["num_blocks"], s["n"], s["m"]
        if s["init"] == "random":
            return random_population(size, blocks, n, m, self.rng)
        if s["init"] == "sensitivity":
            return sensitivity_population(size, blocks, n, m, self.rng)
        return trace_population(s["traces"], size, n, m, self.rng, s["trace_strength"])

    def initialize(self) -> None:
        """Create and evaluate generation 0."""
        if self.initialized:
            raise RuntimeError("search is already initialised")
        started = time.perf_counter()
        population = self._initial_population()
        new = self._evaluate(population)
        self.population, self.generation = population, 0
        self._record(new, started)

    def _offspring(self, parents: Sequence[Individual], count: int) -> list[Individual]:
        n, m, rate = self.n, self.m, self.settings["mutation_rate"]
        children: list[Individual] = []
        while len(children) < count:
            p1, p2 = self.rng.sample(parents, 2) if len(parents) > 1 else (parents[0], parents[0])
            for child in crossover(p1, p2, n, m, self.rng):
                children.append(mutate(child, rate, n, m, self.rng))
        return children[:count]

    def step(self) -> None:
        """One generation: keep the better half, add mutated crossover children, evaluate them."""
        if not self.initialized:
            raise RuntimeError("call initialize() before step()")
        started = time.perf_counter()
        size = self.settings["population_size"]
        parents = self._ranked()[: size // 2]
        children = self._offspring(parents, size - len(parents))
        new = self._evaluate(children)
        self.population = [list(p) for p in parents] + children
        self.generation += 1
        self._record(new, started)

    @property
    def best(self) -> tuple[Individual, float]:
        """(levels, fitness) of the best individual in the current population (= best seen)."""
        if not self.initialized:
            raise RuntimeError("search is not initialised")
        top = self._ranked()[0]
        return list(top), self.fitness(top)

    # -- checkpointing ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot of the whole search, RNG included."""
        return dict(
            settings=dict(self.settings),
            population=[list(ind) for ind in self.population],
            cache=[[list(k), v] for k, v in self.cache.items()],
            evaluations=self.evaluations,
            generation=self.generation,
            history=[dict(h, best_levels=list(h["best_levels"])) for h in self.history],
            rng_state=_rng_state_to_json(self.rng.getstate()),
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict`. Settings must match this search (``generations`` may differ,
        so a finished search can be extended); a mismatch raises ValueError."""
        self._check_saved_settings(state["settings"])
        population = [list(ind) for ind in state["population"]]
        cache = {tuple(k): float(v) for k, v in state["cache"]}
        for ind in population:
            self._check(ind)
            if tuple(ind) not in cache:
                raise ValueError(f"checkpoint population member {ind} has no cached fitness")
        self.population, self.cache = population, cache
        self.evaluations = int(state["evaluations"])
        self.generation = int(state["generation"])
        self.history = [dict(h, best_levels=list(h["best_levels"])) for h in state["history"]]
        self.rng.setstate(_rng_state_from_json(state["rng_state"]))
