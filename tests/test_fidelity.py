"""Multi-fidelity fitness: screen cheaply, score the best fully, never select the rest."""

import math

import pytest
import torch

from msp_callback.search.fidelity import MultiFidelityEvaluate

from .conftest import tiny_model, token_batches
from .test_evolution import WEIGHTS, Counted, brute_force_optimum, convex_fitness, make_search


def test_only_the_best_screened_fraction_is_scored_fully():
    screen, full = Counted(lambda ind: -ind[0]), Counted(lambda ind: 100.0 + ind[0])
    evaluate = MultiFidelityEvaluate(screen, full, keep=0.4, screen_tokens=1, full_tokens=4)
    individuals = [[k, 0] for k in range(5)]
    scores = evaluate(individuals)
    # screen prefers larger first levels: [4,0] and [3,0] (ceil(0.4 * 5) = 2) get full scores
    assert scores == [math.inf, math.inf, math.inf, 103.0, 104.0]
    assert full.seen == [(4, 0), (3, 0)] and len(screen.seen) == 5
    assert evaluate.cost == pytest.approx(2 + 5 / 4)
    assert evaluate([[0, 0]]) == [100.0]  # at least one is always scored
    assert evaluate([]) == []


def test_screen_nan_ranks_last_and_keep_is_checked():
    evaluate = MultiFidelityEvaluate(lambda b: [math.nan, 2.0, 1.0], lambda b: [float(i[0]) for i in b], 0.5, 1, 1)
    assert evaluate([[7], [8], [9]]) == [math.inf, 8.0, 9.0]
    for keep in (0, 1.5):
        with pytest.raises(ValueError, match="keep"):
            MultiFidelityEvaluate(Counted(), Counted(), keep, 1, 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_search_with_screening_keeps_budget_and_true_fitness(seed):
    """A screen that agrees with the true fitness only roughly (noise): the search still meets the
    budget, reports the full fitness of its answer and gets close to the brute-force optimum."""
    noise = {}

    def rough(ind):
        return convex_fitness(ind) * noise.setdefault(tuple(ind), 1 + 0.3 * ((hash(tuple(ind)) % 7) / 7 - 0.5))

    full = Counted()
    search = make_search(MultiFidelityEvaluate(Counted(rough), full, 0.5, 1, 4), seed=seed)
    levels, fitness = search.run()
    assert sum(levels) == 2 * len(WEIGHTS) and fitness == convex_fitness(levels)
    assert fitness <= brute_force_optimum(2, 4, len(WEIGHTS)) * 1.2
    assert all(math.isfinite(h["mean_fitness"]) for h in search.history)
    assert len(full.seen) < search.evaluations  # screening saved full evaluations


def test_search_plan_with_screening_on_a_tiny_model():
    from msp_callback.search.runner import SearchSettings, search_plan

    model = tiny_model("llama")
    fitness_windows = torch.cat(token_batches(4, seed=9))
    settings = SearchSettings(search="paper", population=6, generations=3, screen_windows=1, screen_keep=0.5)
    plan = search_plan(model, 2, 4, "wanda", token_batches(2), fitness_windows, settings, progress=False)
    assert sum(plan.levels) == 2 * len(plan.levels)
    meta = plan.metadata
    assert meta["fitness_cost"] < meta["fitness_evaluations"]  # 1/4-price screen on all, full on half
    assert math.isfinite(meta["best_fitness"])
    with pytest.raises(ValueError, match="screen_windows"):
        search_plan(model, 2, 4, "wanda", token_batches(2), fitness_windows,
                    SearchSettings(search="paper", population=4, generations=1, screen_windows=4), progress=False)


def test_screened_search_resumes_with_its_cost_and_refuses_other_scoring(tmp_path):
    from msp_callback.plan import PlanError
    from msp_callback.search.runner import SearchSettings, search_plan

    model = tiny_model("llama")
    calibration, fitness_windows = token_batches(2), torch.cat(token_batches(4, seed=9))
    ckpt = tmp_path / "ckpt.json"
    whole = search_plan(model, 2, 4, "wanda", calibration, fitness_windows,
                        SearchSettings(search="paper", population=6, generations=3, screen_windows=1), progress=False)

    class Stop(Exception):
        pass

    def stop_at_one(search):
        if search.generation == 1:
            raise Stop

    settings = SearchSettings(search="paper", population=6, generations=3, screen_windows=1, search_checkpoint=str(ckpt))
    with pytest.raises(Stop):
        search_plan(model, 2, 4, "wanda", calibration, fitness_windows, settings, progress=False, on_generation=stop_at_one)
    settings.resume = True
    resumed = search_plan(model, 2, 4, "wanda", calibration, fitness_windows, settings, progress=False)
    assert resumed.levels == whole.levels
    assert resumed.metadata["fitness_cost"] == pytest.approx(whole.metadata["fitness_cost"])
    with pytest.raises(PlanError, match="screen"):
        search_plan(model, 2, 4, "wanda", calibration, fitness_windows,
                    SearchSettings(search="paper", population=6, generations=3, search_checkpoint=str(ckpt), resume=True), progress=False)
    with pytest.raises(ValueError, match="screen_keep"):
        search_plan(model, 2, 4, "wanda", calibration, fitness_windows,
                    SearchSettings(search="paper", population=6, generations=3, screen_windows=1, screen_keep=0.25), progress=False)
