"""Evolutionary search over per-block N:M levels: budget-keeping operators and a resumable search."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msp_callback.search import (
    EvolutionarySearch,
    check_individual,
    crossover,
    mutate,
    random_population,
    repair,
    sensitivity_population,
    trace_levels,
    trace_population,
)
from msp_callback.search.evolution import front_blocks

FAST = settings(max_examples=40, deadline=None)


@st.composite
def budgets(draw, max_blocks: int = 64):
    """(num_blocks, n, m, rng)."""
    m = draw(st.sampled_from([2, 4, 8, 16]))
    return (draw(st.integers(1, max_blocks)), draw(st.integers(0, m)), m,
            random.Random(draw(st.integers(0, 2**32 - 1))))


@st.composite
def individuals(draw, max_blocks: int = 64):
    """(individual meeting the budget, n, m, rng)."""
    num_blocks, n, m, rng = draw(budgets(max_blocks))
    return random_population(1, num_blocks, n, m, rng)[0], n, m, rng


def assert_valid(pop, num_blocks, n, m):
    for ind in pop:
        check_individual(ind, n, m, num_blocks)
        assert all(type(v) is int for v in ind)


# ---------------------------------------------------------------------------------------------
# Operators and initialisations keep the exact budget


@FAST
@given(budgets(), st.integers(0, 5))
def test_random_population_meets_budget(budget, size):
    num_blocks, n, m, rng = budget
    pop = random_population(size, num_blocks, n, m, rng)
    assert len(pop) == size
    assert_valid(pop, num_blocks, n, m)


def test_random_population_is_uniform_over_valid_individuals():
    """Same distribution as the paper's rejection loop: uniform over all budget-meeting vectors."""
    rng = random.Random(0)
    valid = [c for c in itertools.product(range(3), repeat=3) if sum(c) == 3]  # 7 vectors
    counts = Counter(tuple(ind) for ind in random_population(3500, 3, 1, 2, rng))
    assert set(counts) == set(valid)
    assert all(400 < c < 600 for c in counts.values())


@FAST
@given(budgets(), st.integers(0, 5))
def test_sensitivity_population_front_low_deeper_high(budget, size):
    num_blocks, n, m, rng = budget
    pop = sensitivity_population(size, num_blocks, n, m, rng)
    assert len(pop) == size
    assert_valid(pop, num_blocks, n, m)
    k = front_blocks(num_blocks)
    for ind in pop:
        assert all(n - 1 <= v <= n for v in ind[:k])
        assert all(v >= n for v in ind[k:])


def test_sensitivity_population_reaches_paper_example():
    pop = sensitivity_population(300, 5, 3, 4, random.Random(0))
    assert [2, 3, 4, 3, 3] in pop
    assert any(ind != [3] * 5 for ind in pop)


def test_sensitivity_population_varies_on_a_real_depth():
    pop = sensitivity_population(20, 32, 2, 4, random.Random(1))
    assert len({tuple(ind) for ind in pop}) > 10
    assert front_blocks(32) == 6 and front_blocks(1) == 1 and front_blocks(2) == 1


@pytest.mark.parametrize("init", ["random", "sensitivity", "trace"])
@pytest.mark.parametrize("n", [0, 4])
def test_degenerate_budgets_give_uniform(init, n):
    traces = [float(i + 1) for i in range(7)]
    search = EvolutionarySearch(n, 4, 7, population_size=4, generations=2, init=init, traces=traces,
                                evaluate=lambda batch: [0.0] * len(batch))
    levels, _ = search.run()
    assert levels == [n] * 7
    assert all(ind == [n] * 7 for ind in search.population)


@FAST
@given(individuals(), individuals())
def test_crossover_keeps_budget(a, b):
    p1, n, m, rng = a
    # a second parent with the same shape and budget
    p2 = random_population(1, len(p1), n, m, random.Random(len(b[0])))[0]
    before = (list(p1), list(p2))
    c1, c2 = crossover(p1, p2, n, m, rng)
    assert_valid([c1, c2], len(p1), n, m)
    assert (p1, p2) == before
    if len(p1) == 1:
        assert (c1, c2) == (p1, p2)


@FAST
@given(individuals(), st.floats(0.0, 1.0))
def test_mutate_keeps_budget_and_input(case, rate):
    ind, n, m, rng = case
    before = list(ind)
    out = mutate(ind, rate, n, m, rng)
    assert ind == before and out is not ind
    assert_valid([out], len(ind), n, m)
    assert sum(a != b for a, b in zip(ind, out)) <= 2


def test_mutate_rate_zero_is_identity_and_rate_one_reaches_all_pairs():
    rng = random.Random(0)
    ind = [2, 2]
    assert mutate(ind, 0.0, 2, 4, rng) == ind
    outs = {tuple(mutate(ind, 1.0, 2, 4, rng)) for _ in range(200)}
    assert outs == {(a, 4 - a) for a in range(5)}


@FAST
@given(budgets(), st.data())
def test_repair_meets_budget_from_any_levels(budget, data):
    num_blocks, n, m, rng = budget
    levels = data.draw(st.lists(st.integers(0, m), min_size=num_blocks, max_size=num_blocks))
    out = repair(levels, n, m, rng)
    assert_valid([out], num_blocks, n, m)
    # only moves towards the budget: every change has the sign of the deficit
    deficit = n * num_blocks - sum(levels)
    assert all((b - a) * deficit >= 0 for a, b in zip(levels, out))
    assert sum(abs(b - a) for a, b in zip(levels, out)) == abs(deficit)


def test_repair_rejects_out_of_range_levels():
    with pytest.raises(ValueError, match="0..4"):
        repair([5, 0], 2, 4, random.Random(0))


# ---------------------------------------------------------------------------------------------
# Trace-based initialisation


traces_strategy = st.lists(st.floats(1e-6, 1e6), min_size=1, max_size=64)


@FAST
@given(traces_strategy, st.sampled_from([2, 4, 8, 16]), st.data(), st.floats(0.0, 4.0))
def test_trace_levels_monotone_deterministic_exact(traces, m, data, strength):
    n = data.draw(st.integers(0, m))
    levels = trace_levels(traces, n, m, strength)
    assert_valid([levels], len(traces), n, m)
    assert trace_levels(traces, n, m, strength) == levels
    for i, j in itertools.permutations(range(len(traces)), 2):
        if traces[i] > traces[j]:
            assert levels[i] <= levels[j], (traces, levels)


def test_trace_levels_examples():
    assert trace_levels([3.0, 3.0, 3.0], 2, 4) == [2, 2, 2]
    assert trace_levels([100.0, 1.0, 1.0, 1.0], 2, 4, strength=0.0) == [2, 2, 2, 2]
    levels = trace_levels([100.0, 10.0, 1.0, 0.1], 2, 4)
    assert levels == sorted(levels) and levels[0] < 2 < levels[-1]
    assert trace_levels([0.0, 1.0, 2.0], 1, 2)[2] <= 1  # zero trace allowed


@FAST
@given(traces_strategy, st.sampled_from([2, 4, 8, 16]), st.data(), st.integers(0, 8))
def test_trace_population_meets_budget(traces, m, data, size):
    n = data.draw(st.integers(0, m))
    rng = random.Random(data.draw(st.integers(0, 1000)))
    pop = trace_population(traces, size, n, m, rng)
    assert len(pop) == size
    assert_valid(pop, len(traces), n, m)
    if size:
        assert pop[0] == trace_levels(traces, n, m)


@pytest.mark.parametrize("bad", [[1.0, float("nan")], [1.0, -1.0], []])
def test_trace_levels_rejects_bad_traces(bad):
    with pytest.raises(ValueError):
        trace_levels(bad, 2, 4)


# ---------------------------------------------------------------------------------------------
# The search


WEIGHTS = [5.0, 3.0, 1.0, 0.5, 2.0]


def convex_fitness(levels):
    return sum(w * (2.0**v) for w, v in zip(WEIGHTS, levels))


class Counted:
    """evaluate() that counts individuals and calls."""

    def __init__(self, fn=convex_fitness):
        self.fn, self.seen, self.calls = fn, [], 0

    def __call__(self, batch):
        self.calls += 1
        self.seen.extend(tuple(ind) for ind in batch)
        return [self.fn(ind) for ind in batch]


def brute_force_optimum(n, m, blocks):
    valid = (c for c in itertools.product(range(m + 1), repeat=blocks) if sum(c) == n * blocks)
    return min(convex_fitness(c) for c in valid)


def make_search(evaluate=None, **kw):
    kw = dict(dict(population_size=12, generations=15, seed=0, init="sensitivity"), **kw)
    return EvolutionarySearch(2, 4, len(WEIGHTS), evaluate=evaluate or Counted(), **kw)


def strip_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("init", ["random", "sensitivity", "trace"])
@pytest.mark.parametrize("seed", [0, 1])
def test_search_finds_optimum_and_best_never_worsens(init, seed):
    search = make_search(seed=seed, init=init, traces=WEIGHTS)
    levels, fitness = search.run()
    assert fitness == convex_fitness(levels)
    assert fitness <= brute_force_optimum(2, 4, len(WEIGHTS)) * 1.05
    bests = [h["best_fitness"] for h in search.history]
    assert all(b2 <= b1 for b1, b2 in zip(bests, bests[1:]))
    assert [h["generation"] for h in search.history] == list(range(16))
    assert search.done and search.generation == 15
    assert all(h["mean_fitness"] >= h["best_fitness"] for h in search.history)


def test_every_individual_ever_produced_is_valid():
    evaluate = Counted()
    make_search(evaluate, init="random", mutation_rate=1.0).run()
    assert_valid([list(s) for s in evaluate.seen], len(WEIGHTS), 2, 4)


def test_same_seed_same_result_other_seed_differs():
    runs = [make_search(seed=s, init="random") for s in (3, 3, 4)]
    for r in runs:
        r.run()
    assert strip_seconds(runs[0].history) == strip_seconds(runs[1].history)
    assert runs[0].population == runs[1].population
    assert strip_seconds(runs[0].history) != strip_seconds(runs[2].history)


def test_cached_individuals_are_not_reevaluated():
    evaluate = Counted()
    search = make_search(evaluate)
    search.run()
    assert len(evaluate.seen) == len(set(evaluate.seen)) == search.evaluations == len(search.cache)
    assert sum(h["evaluations"] for h in search.history) == search.evaluations
    # far fewer than population_size per generation once the search converges
    assert search.evaluations < 12 + 15 * 6
    assert evaluate.calls <= 16


@pytest.mark.parametrize("stop_after", [0, 1, 7])
def test_resume_equals_uninterrupted(stop_after):
    full = make_search(init="random")
    full.run()

    saved = {}

    def checkpoint(s):
        if s.generation == stop_after:
            saved["state"] = json.dumps(s.state_dict())

    first = make_search(init="random")
    first.run(callback=checkpoint)
    resumed = make_search(init="random")
    resumed.load_state_dict(json.loads(saved["state"]))
    assert resumed.generation == stop_after
    best = resumed.run()
    assert best == full.best
    assert strip_seconds(resumed.history) == strip_seconds(full.history)
    assert resumed.population == full.population and resumed.evaluations == full.evaluations


def test_resume_does_not_reevaluate_cached():
    search = make_search(init="random", generations=3)
    search.run()
    state = json.loads(json.dumps(search.state_dict()))
    evaluate = Counted()
    resumed = make_search(evaluate, init="random", generations=3)
    resumed.load_state_dict(state)
    resumed.run()
    assert evaluate.calls == 0
    resumed.settings["generations"] = 5  # extend a finished search
    resumed.run()
    assert resumed.generation == 5 and set(evaluate.seen).isdisjoint(state_keys(state))


def state_keys(state):
    return {tuple(k) for k, _ in state["cache"]}


def test_callback_runs_after_every_generation():
    gens = []
    make_search(generations=4).run(callback=lambda s: gens.append(s.generation))
    assert gens == [0, 1, 2, 3, 4]


def test_batch_evaluate_may_be_split_across_workers():
    """An evaluate that scores halves of the batch separately gives the same run."""
    def split(batch):
        half = len(batch) // 2
        return [convex_fitness(i) for i in batch[:half]] + [convex_fitness(i) for i in batch[half:]]

    a, b = make_search(), make_search(split)
    a.run(), b.run()
    assert strip_seconds(a.history) == strip_seconds(b.history)


@pytest.mark.parametrize("field,value", [("n", 1), ("m", 8), ("num_blocks", 6)])
def test_load_state_dict_rejects_other_settings(field, value):
    search = make_search(generations=1)
    search.run()
    state = search.state_dict()
    kw = dict(n=2, m=4, num_blocks=len(WEIGHTS), population_size=12, generations=1, init="sensitivity")
    kw[field] = value
    other = EvolutionarySearch(**kw)
    with pytest.raises(ValueError, match=field):
        other.load_state_dict(state)


@pytest.mark.parametrize("kw,match", [
    (dict(n=5), "N=5"),
    (dict(n=-1), "N=-1"),
    (dict(num_blocks=0), "num_blocks"),
    (dict(population_size=1), "population_size"),
    (dict(mutation_rate=1.5), "mutation_rate"),
    (dict(init="trace"), "traces"),
    (dict(init="trace", traces=[1.0, 2.0]), "traces"),
    (dict(init="nope"), "init"),
])
def test_invalid_settings_raise(kw, match):
    base = dict(n=2, m=4, num_blocks=5)
    with pytest.raises(ValueError, match=match):
        EvolutionarySearch(**dict(base, **kw))


def test_check_individual_messages():
    check_individual([1, 3], 2, 4, 2)
    with pytest.raises(ValueError, match="budget"):
        check_individual([1, 2], 2, 4)
    with pytest.raises(ValueError, match="0..4"):
        check_individual([-1, 5], 2, 4)
    with pytest.raises(ValueError, match="one per block"):
        check_individual([2, 2], 2, 4, 3)


def test_step_before_initialize_and_missing_evaluate():
    search = EvolutionarySearch(2, 4, 5)
    with pytest.raises(RuntimeError, match="initialize"):
        search.step()
    with pytest.raises(RuntimeError, match="evaluate"):
        search.initialize()
