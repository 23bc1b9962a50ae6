"""Levels per unit (attention / MLP, or each linear) and the level-switch search."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from msp_callback.allocation import make_plan
from msp_callback.config import ConfigError, SearchSettings, check
from msp_callback.export import load_pruned, save_pruned
from msp_callback.models import block_linears, find_blocks
from msp_callback.nm import mask_of
from msp_callback.plan import PlanError, SparsityPlan
from msp_callback.pruner import prune
from msp_callback.saving import restore_masks
from msp_callback.search.level_switch import LevelSwitchSearch, check_units, mutate_switches, switch
from msp_callback.units import UnitLayout, linear_group
from tests.conftest import tiny_model, token_batches


def test_units_of_a_llama_block():
    model = tiny_model("llama")  # q, o 64x64; k, v 32x64; gate, up, down 128x64
    block = UnitLayout.of_model(model, "block")
    assert block.names == ("block",) and block.weights == (1, 1, 1)
    groups = UnitLayout.of_model(model, "attn_mlp")
    assert groups.names == ("attn", "mlp") and groups.weights == (1, 2) * 3  # 12,288 and 24,576 parameters
    linear = UnitLayout.of_model(model, "linear")
    assert linear.names[0] == "self_attn.q_proj" and len(linear.names) == 7
    assert linear.weights[:7] == (2, 1, 1, 2, 4, 4, 4)
    assert [linear_group(n) for n in ("attn.c_attn", "self_attention.dense", "mlp.fc1", "fc2")] == [
        "attn", "attn", "mlp", "mlp"]


def _exact_by_parameters(model, plan) -> bool:
    pruned = total = 0
    for index, block in enumerate(find_blocks(model)):
        linears = block_linears(block)
        for name, level in plan.linear_levels(index, linears).items():
            pruned += linears[name].weight.numel() * level
            total += linears[name].weight.numel()
    return pruned == plan.target * total


def test_a_unit_plan_is_budget_exact_by_parameters_and_round_trips():
    model = tiny_model("llama")
    layout = UnitLayout.of_model(model, "attn_mlp")
    plan = SparsityPlan.for_units(layout, 2, 4, [4, 1, 0, 3, 2, 2], allocation="msp")  # 4+2, 0+6, 2+4 = 18 = 2 x 9
    assert _exact_by_parameters(model, plan)
    assert plan.num_blocks == 3 and plan.block_levels(1) == {"attn": 0, "mlp": 3} and not plan.fully_pruned(0)
    assert plan.levels_by_unit() == {"attn": [4, 0, 2], "mlp": [1, 3, 2]}
    assert "attn levels [4, 0, 2], mlp levels [1, 3, 2]" in plan.describe()
    assert SparsityPlan.from_json(plan.to_json()) == plan
    with pytest.raises(PlanError, match="weighted by parameters sum to 19"):
        SparsityPlan.for_units(layout, 2, 4, [4, 1, 1, 3, 2, 2])
    with pytest.raises(PlanError, match="another model"):
        plan.check_units(UnitLayout.of_model(model, "linear"))
    block_plan = SparsityPlan(m=4, target=2, levels=[2, 2, 2])
    assert "granularity" not in block_plan.to_dict()  # a block plan's JSON is unchanged


def test_a_finer_granularity_needs_the_level_switch_search():
    with pytest.raises(ConfigError, match="needs search='level-switch'"):
        check(SearchSettings(search="paper", granularity="attn_mlp"))
    check(SearchSettings(search="level-switch", granularity="linear"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 8), min_size=2, max_size=12), st.sampled_from([2, 4, 8]), st.integers(0, 2**16),
       st.data())
def test_switches_keep_the_parameter_budget_exactly(weights, m, seed, data):
    n = data.draw(st.integers(0, m))
    rng = random.Random(seed)
    levels = [n] * len(weights)
    for _ in range(20):
        levels = mutate_switches(levels, weights, m, 3, rng)
        check_units(levels, n, m, weights)
    moved = switch(levels, weights, m, rng)
    if moved is not None:
        assert moved != levels
        check_units(moved, n, m, weights)


def _toy_fitness(weights):
    target = [(i * 7) % 5 for i in range(len(weights))]  # some far-from-uniform optimum

    def evaluate(individuals):
        return [float(sum((a - b) ** 2 for a, b in zip(ind, target))) for ind in individuals]
    return evaluate


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=2, max_size=10), st.integers(0, 2**16), st.booleans())
def test_the_level_switch_search_keeps_its_invariants(weights, seed, screened):
    full = _toy_fitness(weights)
    calls = []

    def counted(individuals):
        calls.extend(tuple(i) for i in individuals)
        return full(individuals)

    search = LevelSwitchSearch(2, 4, weights, offspring=6, survivors=2, generations=6, seed=seed, full=counted,
                               screen=full if screened else None, screen_tokens=1, full_tokens=4)
    best = []
    search.run(callback=lambda s: best.append(s.best[1]))
    assert all(b2 <= b1 for b1, b2 in zip(best, best[1:]))  # elitist: the best never gets worse
    assert len(calls) == len(set(calls)) == search.evaluations == len(search.cache)  # no individual scored twice
    for levels in search.cache:
        check_units(levels, 2, 4, weights)
    assert search.cost == search.evaluations + search.screenings / 4


def test_a_resumed_level_switch_search_ends_where_an_uninterrupted_one_does():
    weights = [1, 2, 1, 2, 1, 2]
    kwargs = dict(offspring=5, survivors=2, seed=3, full=_toy_fitness(weights), screen=_toy_fitness(weights),
                  screen_tokens=1, full_tokens=4)
    whole = LevelSwitchSearch(2, 4, weights, generations=8, **kwargs)
    whole.run()
    first = LevelSwitchSearch(2, 4, weights, generations=3, **kwargs)
    first.run()
    resumed = LevelSwitchSearch(2, 4, weights, generations=8, **kwargs)
    resumed.load_state_dict(first.state_dict())
    resumed.run()
    assert resumed.best == whole.best and resumed.history == [
        dict(h, seconds=r["seconds"]) for h, r in zip(whole.history, resumed.history)]
    with pytest.raises(ValueError, match="different search"):
        LevelSwitchSearch(2, 4, weights, generations=8, **dict(kwargs, seed=4)).load_state_dict(first.state_dict())


def test_pruning_to_a_unit_plan_gives_each_linear_its_level(tmp_path):
    model = tiny_model("llama")
    layout = UnitLayout.of_model(model, "attn_mlp")
    plan = SparsityPlan.for_units(layout, 2, 4, [4, 1, 0, 3, 2, 2], criterion="wanda")
    prune(model, plan, token_batches(2), progress=False)
    for index, block in enumerate(find_blocks(model)):
        for name, module in block_linears(block).items():
            level = plan.block_levels(index)[linear_group(name)]
            kept = mask_of(module).reshape(module.weight.shape[0], -1, 4).sum(-1)
            assert bool((kept == 4 - level).all()), (index, name, level)


def test_a_per_group_search_plan_survives_pruning_export_and_both_reloads(tmp_path):
    model = tiny_model("llama")
    calibration = token_batches(2)
    plan = make_plan("msp", model, 2, 4, "wanda", calibration=calibration, progress=False,
                     search=SearchSettings(search="level-switch", granularity="attn_mlp", population=4,
                                           generations=3, survivors=2, screen_windows=1))
    assert plan.granularity == "attn_mlp" and plan.unit_names == ["attn", "mlp"] and len(plan.levels) == 6
    assert _exact_by_parameters(model, plan) and plan.metadata["fitness_cost"] > 0
    prune(model, plan, calibration, progress=False)
    masks = {(i, n): mask_of(m).clone() for i, b in enumerate(find_blocks(model)) for n, m in block_linears(b).items()}
    for fmt in ("plain", "compact"):
        save_pruned(model, tmp_path / fmt, plan, drop_pruned_blocks=False, format=fmt)
        loaded, record = load_pruned(tmp_path / fmt)
        assert record.plan == plan
        assert all(torch.equal(mask_of(m), masks[(i, n)])
                   for i, b in enumerate(find_blocks(loaded)) for n, m in block_linears(b).items())
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")  # transformers alone: no masks
    restore_masks(plain)  # from the plan recorded in its config
    assert all(torch.equal(mask_of(m), masks[(i, n)])
               for i, b in enumerate(find_blocks(plain)) for n, m in block_linears(b).items())


def test_level_switch_starts_are_uniform_and_the_papers_initialisation_per_unit():
    from msp_callback.search.runner import level_switch_starts

    layout = UnitLayout("attn_mlp", ("attn", "mlp"), 5, (1, 3) * 5)
    starts = level_switch_starts(layout, 3, 4, SearchSettings(search="level-switch", granularity="attn_mlp",
                                                              population=6), None, seed=0)
    assert starts[0] == [3] * 10 and len(starts) == 6
    for start in starts:
        check_units(start, 3, 4, layout.weights)
        assert all(start[2 * b] == start[2 * b + 1] for b in range(5))  # a block's units share its level
    assert any(start != starts[0] for start in starts[1:])
