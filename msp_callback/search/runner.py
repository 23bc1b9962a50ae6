"""Run the MSP search on a model: level cache + fitness + evolution, checkpointed every generation."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from ..distributed import ShardedEvaluate, world
from ..files import atomic_write_text
from ..models import fingerprint
from ..plan import PlanError, SparsityPlan
from .evolution import EvolutionarySearch
from .fidelity import CostMeter, MultiFidelityEvaluate
from .fitness import FITNESSES
from .levels import LevelCache

log = logging.getLogger(__name__)


@dataclass
class SearchSettings:
    """The search's knobs; defaults as in the paper (20 individuals x 20 generations, rate 0.5)."""

    population: int = 20
    generations: int = 20
    mutation_rate: float = 0.5
    init: str = "sensitivity"  # random | sensitivity (Algorithm 3) | trace (measured Fisher traces)
    trace_strength: float = 1.0
    fitness: str = "ppl"  # ppl (the paper's) | kl (to the dense model's top-k, as in EvoPress)
    fitness_batch_size: int = 4
    screen_windows: int = 0  # > 0: multi-fidelity, new individuals screened on this many fitness windows
    screen_keep: float = 0.5  # fraction of screened individuals then scored on the whole fitness split
    checkpoint: str | None = None  # JSON file written after every generation
    resume: bool = False


def _load_checkpoint(path: Path, search: EvolutionarySearch, model_print: dict, criterion: str,
                     scoring: dict[str, Any]) -> None:
    state = json.loads(path.read_text())
    if state.get("scoring", scoring) != scoring:  # cached fitnesses are only comparable under one scoring
        raise PlanError(f"checkpoint {path} was scored with {state['scoring']}, this search with {scoring}; "
                        "resume with the same fitness and screening settings, or start a new search")
    if state.get("fingerprint") != model_print or state.get("criterion") != criterion:
        raise PlanError(
            f"checkpoint {path} was written for another model or criterion "
            f"({state.get('fingerprint', {}).get('architecture')}, {state.get('criterion')}); "
            "delete it or pass another --checkpoint to start a new search"
        )
    search.load_state_dict(state["search"])
    log.info("resumed search from %s at generation %d", path, search.generation)


def search_plan(
    model: nn.Module,
    n: int,
    m: int,
    criterion: str,
    calibration: Sequence[Tensor],
    fitness_windows: Tensor,
    settings: SearchSettings | None = None,
    traces: Sequence[float] | None = None,
    seed: int = 0,
    progress: bool = True,
    on_generation: Callable[[EvolutionarySearch], None] | None = None,
) -> SparsityPlan:
    """Search per-block levels at target N:M; the model is left dense, the plan returned."""
    settings = settings or SearchSettings()
    model_print = fingerprint(model)
    started = time.perf_counter()
    cache = LevelCache(model, criterion, m, calibration, progress=progress)
    cache_seconds = time.perf_counter() - started
    if settings.fitness not in FITNESSES:
        raise ValueError(f"unknown fitness {settings.fitness!r}; available: {sorted(FITNESSES)}")
    fitness = FITNESSES[settings.fitness](model, cache, fitness_windows, settings.fitness_batch_size)
    sharded = ShardedEvaluate(fitness)  # in a distributed run each rank scores its share
    evaluate: Callable[[Sequence[Sequence[int]]], list[float]] = sharded
    if settings.screen_windows:
        if settings.screen_keep < 0.5:
            raise ValueError(f"screen_keep must be at least 0.5 (the search keeps the better half as parents; fewer "
                             f"fully scored individuals would make rejected ones parents), got {settings.screen_keep}")
        if not 0 < settings.screen_windows < len(fitness_windows):
            raise ValueError(f"screen_windows must be between 1 and {len(fitness_windows) - 1} (the fitness split has "
                             f"{len(fitness_windows)} windows), got {settings.screen_windows}; 0 turns screening off")
        screen = FITNESSES[settings.fitness](model, cache, fitness_windows[: settings.screen_windows],
                                             settings.fitness_batch_size)
        evaluate = MultiFidelityEvaluate(ShardedEvaluate(screen), sharded, settings.screen_keep, screen.tokens,
                                         fitness.tokens)
    rank, _ = world()
    progress = progress and rank == 0
    search = EvolutionarySearch(
        n, m, model_print["num_blocks"], population_size=settings.population, generations=settings.generations,
        mutation_rate=settings.mutation_rate, seed=seed, init=settings.init,
        traces=list(traces) if traces is not None else None, trace_strength=settings.trace_strength,
        evaluate=evaluate,
    )
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else None
    scoring = {"fitness": settings.fitness, "screen_windows": settings.screen_windows,
               "screen_keep": settings.screen_keep if settings.screen_windows else None}
    if checkpoint and settings.resume and checkpoint.exists():
        _load_checkpoint(checkpoint, search, model_print, criterion, scoring)
    meter = CostMeter(search, evaluate)

    bar = tqdm(total=settings.generations + 1, initial=search.generation + 1, desc="msp search", disable=not progress)

    def after_generation(s: EvolutionarySearch) -> None:
        meter(s)
        bar.update(s.generation + 1 - bar.n)
        bar.set_postfix(best=f"{s.best[1]:.4g}", evals=s.evaluations)
        if checkpoint and rank == 0:
            atomic_write_text(checkpoint, json.dumps(
                {"fingerprint": model_print, "criterion": criterion, "scoring": scoring, "search": s.state_dict()}))
        if on_generation:
            on_generation(s)

    try:
        levels, best = search.run(callback=after_generation)
    finally:
        bar.close()
        cache.restore_dense()
    return SparsityPlan(
        m=m, target=n, levels=levels, criterion=criterion, allocation="msp", fingerprint=model_print,
        metadata={
            "search": asdict(settings),
            "seed": seed,
            "best_fitness": best,
            "fitness_tokens": fitness.tokens,
            "fitness_evaluations": search.evaluations,
            "fitness_evaluations_this_rank": sharded.evaluated_here,
            "fitness_cost": meter.total,  # in full-evaluation units; below fitness_evaluations when screening
            "level_cache_seconds": cache_seconds,
            "search_seconds": time.perf_counter() - started,
            "history": search.history,
        },
    )


def search_summary(plan: SparsityPlan) -> dict[str, Any]:
    meta = plan.metadata
    return {k: meta[k] for k in ("search_seconds", "fitness_evaluations", "history", "best_fitness") if k in meta}
