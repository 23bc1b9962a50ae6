import pytest

from msp_callback.block_walk import CalibrationError
from msp_callback.models import fingerprint
from msp_callback.nm import NMPatternError
from msp_callback.plan import PlanError, SparsityPlan, nm_string, parse_nm
from msp_callback.pruner import prune

from .conftest import tiny_model


def test_json_round_trip(tmp_path):
    plan = SparsityPlan(m=8, target=6, levels=[4, 8, 6], criterion="sparsegpt", allocation="msp",
                        fingerprint={"architecture": "X", "num_blocks": 3}, metadata={"seed": 3})
    assert SparsityPlan.from_json(plan.to_json()) == plan
    assert SparsityPlan.load(plan.save(tmp_path / "p" / "plan.json")) == plan
    assert plan.target_sparsity == 0.75


def test_nm_strings():
    assert nm_string(3, 4) == "3:4 (75.0%)"
    assert parse_nm("10:16") == (10, 16)
    with pytest.raises(PlanError, match="must lie in 0..4"):
        parse_nm("5:4")
    with pytest.raises(PlanError, match="form N:M"):
        parse_nm("75%")


def test_budget_and_range_are_checked():
    with pytest.raises(PlanError, match="budget"):
        SparsityPlan(m=4, target=2, levels=[3, 3, 2])
    with pytest.raises(PlanError, match="block 1 has level 5"):
        SparsityPlan(m=4, target=3, levels=[4, 5, 0])


def test_plan_for_another_model_fails_clearly():
    plan = SparsityPlan.uniform(2, 4, 3, fingerprint=fingerprint(tiny_model("qwen2")))
    with pytest.raises(PlanError, match="architecture='Qwen2ForCausalLM'.*'LlamaForCausalLM'.*make a new plan"):
        prune(tiny_model("llama"), plan, progress=False)
    with pytest.raises(PlanError, match="5 block levels but the model has 3"):
        prune(tiny_model("llama"), SparsityPlan.uniform(2, 4, 5), progress=False)


def test_m_not_dividing_width():
    model = tiny_model("llama")  # widths 64 and 128
    plan = SparsityPlan.uniform(1, 3, 3, criterion="magnitude")
    with pytest.raises(NMPatternError, match="block 0 self_attn.q_proj: input width 64 is not divisible by M=3"):
        prune(model, plan, progress=False)


def test_empty_calibration():
    plan = SparsityPlan.uniform(2, 4, 3, criterion="wanda")
    with pytest.raises(CalibrationError, match="needs calibration batches"):
        prune(tiny_model("llama"), plan, [], progress=False)
    with pytest.raises(CalibrationError, match="needs calibration batches"):
        prune(tiny_model("llama"), plan, None, progress=False)


def test_prune_twice_is_refused():
    model = tiny_model("llama")
    plan = SparsityPlan.uniform(2, 4, 3, criterion="magnitude")
    prune(model, plan, progress=False)
    with pytest.raises(RuntimeError, match="remove_masks"):
        prune(model, plan, progress=False)
