"""Run the MSP search on a model: level cache + fitness + evolution, checkpointed every generation."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from ..atomic_files import atomic_write_text
from ..config import SearchSettings, check, label
from ..criteria import get_criterion
from ..data import token_digest
from ..distributed import ShardedEvaluate, world
from ..models import find_blocks, fingerprint, input_device
from ..plan import PlanError, SparsityPlan
from ..sharded import is_sharded
from ..units import UnitLayout
from .evolution import EvolutionarySearch, random_population, sensitivity_population, trace_population
from .fidelity import CostMeter, MultiFidelityEvaluate
from .fitness import FITNESSES
from .level_cache import LevelCache
from .level_switch import LevelSwitchSearch

log = logging.getLogger(__name__)


def data_digest(calibration: Sequence[Tensor], fitness_windows: Tensor) -> str:
    """SHA-256 of the token ids the level cache and the fitness are computed from: a resumed
    search's cached scores are only valid on the same data."""
    return token_digest([*calibration, fitness_windows])


def fixed_settings(settings: SearchSettings, n: int, m: int, seed: int, data: str,
                   data_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a search cannot change when it resumes: its scoring (cached fitnesses are only comparable
    under one), every setting that shapes its individuals, and its data (``data_settings``, named
    by the caller, then their digest). ``generations`` may grow."""
    fixed = {"search": settings.search, "granularity": settings.granularity, "fitness": settings.fitness,
             "screen_windows": settings.screen_windows,
             "screen_keep": settings.screen_keep if settings.screen_windows else None,
             "sparsity": f"{n}:{m}", "max_level": settings.max_level,
             "population": settings.population, "init": settings.init, "seed": seed,
             **(data_settings or {}), "data": data}
    if settings.search == "paper":
        fixed["mutation_rate"] = settings.mutation_rate
    else:
        fixed.update(survivors=settings.survivors, max_switches=settings.max_switches)
    if settings.init == "trace":
        fixed["trace_strength"] = settings.trace_strength
    return fixed


def _load_checkpoint(path: Path, search: EvolutionarySearch, model_print: dict, criterion: str,
                     fixed: dict[str, Any]) -> None:
    try:
        state = json.loads(path.read_text())
        stored = state["scoring"] if "scoring" in state else {}
        saved_search = state["search"]
    except (ValueError, KeyError, TypeError) as error:
        raise PlanError(f"search checkpoint {path} is damaged ({error}); delete it to start a new search") from None
    for key, value in fixed.items():
        if key not in stored:
            log.warning("search checkpoint %s does not record its %s: resuming without checking it", path, key)
        elif stored[key] != value and key == "data":
            raise PlanError(f"checkpoint {path} was scored with other calibration or fitness data (corpus, rows, lengths "
                            "or seed) than this search; resume with the same settings, or delete the checkpoint to start "
                            "a new search")
        elif stored[key] != value:
            name = (label(SearchSettings, key) if key in SearchSettings.__dataclass_fields__
                    else f"{key} (--{key.replace('_', '-')})")
            raise PlanError(f"checkpoint {path} was written by a search with {name} {stored[key]}, and this one has "
                            f"{value}: resume with {stored[key]}, or drop --resume (delete the checkpoint) to start a "
                            "new search")
    if state.get("fingerprint") != model_print or state.get("criterion") != criterion:
        raise PlanError(
            f"checkpoint {path} was written for another model or criterion "
            f"({(state.get('fingerprint') or {}).get('architecture')}, {state.get('criterion')}); "
            "delete it or pass another --checkpoint to start a new search"
        )
    search.load_state_dict(saved_search)
    log.info("resumed search from %s at generation %d", path, search.generation)


def level_switch_starts(layout: UnitLayout, n: int, m: int, settings: SearchSettings,
                        traces: Sequence[float] | None, seed: int) -> list[list[int]]:
    """Where the level-switch search starts: uniform, plus ``population - 1`` individuals of the
    paper's initialisation (``settings.init``), each block's units at its block's level; generation 0
    picks the parent among them."""
    rng = random.Random(seed)
    size, blocks = settings.population, layout.num_blocks
    if settings.init == "trace":
        if traces is None:
            raise ValueError("init='trace' needs the per-block Fisher traces")
        population = trace_population(traces, size, n, m, rng, settings.trace_strength)
    elif settings.init == "random":
        population = random_population(size, blocks, n, m, rng)
    else:
        population = sensitivity_population(size, blocks, n, m, rng)
    starts = [[n] * layout.num_units]
    budget = layout.budget(n)
    for individual in population[: max(0, size - 1)]:
        expanded = layout.from_block_levels(individual)
        if layout.spent(expanded) == budget:  # blocks of unequal size: a block plan is not parameter-exact
            starts.append(expanded)
    return starts


def check_level_cache(cache: LevelCache, model: nn.Module, criterion: str, m: int) -> None:
    """Refuse a level cache built for another model, criterion or M."""
    wanted = get_criterion(criterion).name
    if cache.m != m or cache.criterion.name != wanted:
        raise ValueError(f"the level cache was built for {cache.criterion.name} at M={cache.m}, this search prunes "
                         f"with {wanted} at M={m}; build a LevelCache for this criterion and M")
    if cache.blocks is not find_blocks(model):
        raise ValueError("the level cache was built on another model; build a LevelCache on the model searched")


def fitness_scratch_bytes(model: nn.Module, windows: Tensor, batch_size: int) -> int:
    """What scoring one batch holds on the device: about three float32 copies of the logits
    (logits, their float32 log-softmax, and the metric's or the KL's work), B x T x vocabulary each."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = head.weight.shape[0] if head is not None else getattr(getattr(model, "config", None), "vocab_size", 0)
    return 3 * min(batch_size, windows.shape[0]) * windows.shape[-1] * vocab * 4


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
    level_cache: LevelCache | None = None,
    data_settings: dict[str, Any] | None = None,
) -> SparsityPlan:
    """Search levels at target N:M (one per block, or per unit at a finer ``settings.granularity``);
    the model is left dense, the plan returned.

    ``level_cache``: one already built on this model from ``calibration`` with this criterion and M,
    to run several searches on one cache (it is left open and dense); by default the search builds
    its own and frees it. ``data_settings``: the caller's settings that drew ``calibration`` and
    ``fitness_windows`` (corpus, rows, lengths), kept in the checkpoint so that a resume under
    other ones is refused naming the setting."""
    settings = settings or SearchSettings()
    check(settings)  # e.g. a finer granularity than block needs the level-switch search
    settings = settings.resolved(len(fitness_windows))
    model_print = fingerprint(model)
    layout = UnitLayout.of_model(model, settings.granularity)
    top = settings.level_bound(n, m, reconstructing=False)  # the searches' highest level (callers resolve reconstruction)
    if not n <= top <= m:
        raise PlanError(f"{label(SearchSettings, 'max_level')} {top} must lie between N={n} and M={m}: below N no "
                        "plan meets the budget")
    if top == n:  # every unit at most N and N on average: every unit at N
        log.info("max_level %d = N: the uniform plan is the only one within it; no search", top)
        return SparsityPlan.for_units(layout, n, m, [n] * layout.num_units, criterion=criterion, allocation="uniform",
                                      fingerprint=model_print, metadata={"search": asdict(settings), "seed": seed,
                                                                         "search_skipped": f"max_level {top} = N"})
    if top < m:
        log.info("search: no unit pruned more than %d of %d (max_level)", top, m)
    started = time.perf_counter()
    if level_cache is None:
        cache = LevelCache(model, criterion, m, calibration, progress=progress, storage=settings.cache_storage,
                           working_bytes=fitness_scratch_bytes(model, fitness_windows, settings.fitness_batch_size))
    else:
        check_level_cache(level_cache, model, criterion, m)
        cache = level_cache
    cache_seconds = time.perf_counter() - started
    fitness = FITNESSES[settings.fitness](model, cache, fitness_windows, settings.fitness_batch_size, layout)
    split = not is_sharded(model)  # under DDP each rank scores its share; an FSDP model scores in step
    sharded = ShardedEvaluate(fitness, split, input_device(model))
    evaluate: Callable[[Sequence[Sequence[int]]], list[float]] = sharded
    screen_evaluate, screen_tokens = None, 0
    if settings.screen_windows:
        settings.check_screening(len(fitness_windows))
        screen = FITNESSES[settings.fitness](model, cache, fitness_windows[: settings.screen_windows],
                                             settings.fitness_batch_size, layout)
        screen_evaluate, screen_tokens = ShardedEvaluate(screen, split, input_device(model)), screen.tokens
        if settings.search == "paper":  # screen_keep >= 0.5: the better half are parents, so all are fully scored
            evaluate = MultiFidelityEvaluate(screen_evaluate, sharded, settings.screen_keep, screen.tokens,
                                             fitness.tokens)
    rank, _ = world()
    progress = progress and rank == 0
    search: EvolutionarySearch | LevelSwitchSearch
    if settings.search == "paper":
        search = EvolutionarySearch(
            n, top, model_print["num_blocks"], population_size=settings.population, generations=settings.generations,
            mutation_rate=settings.mutation_rate, seed=seed, init=settings.init,
            traces=list(traces) if traces is not None else None, trace_strength=settings.trace_strength,
            evaluate=evaluate,
        )
    else:
        search = LevelSwitchSearch(
            n, top, layout.weights, offspring=settings.population, survivors=settings.survivors,
            generations=settings.generations, max_switches=settings.max_switches, seed=seed,
            starts=level_switch_starts(layout, n, top, settings, traces, seed), full=sharded, screen=screen_evaluate,
            screen_tokens=screen_tokens, full_tokens=fitness.tokens,
        )
    checkpoint = Path(settings.search_checkpoint) if settings.search_checkpoint else None
    fixed = fixed_settings(settings, n, m, seed, data_digest(calibration, fitness_windows), data_settings)
    if checkpoint and settings.resume and checkpoint.exists():
        _load_checkpoint(checkpoint, search, model_print, criterion, fixed)
    meter = CostMeter(search, evaluate)

    bar = tqdm(total=settings.generations + 1, initial=search.generation + 1, desc="msp search", disable=not progress)

    def after_generation(s: EvolutionarySearch) -> None:
        meter(s)
        bar.update(s.generation + 1 - bar.n)
        bar.set_postfix(best=f"{s.best[1]:.4g}", evals=s.evaluations)
        if checkpoint and rank == 0:
            atomic_write_text(checkpoint, json.dumps(
                {"fingerprint": model_print, "criterion": criterion, "scoring": fixed, "search": s.state_dict()}))
        if on_generation:
            on_generation(s)

    try:
        levels, best = search.run(callback=after_generation)
    finally:
        bar.close()
        fitness.release()
        if screen_evaluate is not None:
            screen.release()
        if level_cache is None:
            cache.close()
        else:
            cache.restore_dense()
    return SparsityPlan.for_units(
        layout, n, m, levels, criterion=criterion, allocation="msp", fingerprint=model_print,
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
