"""Sparsity-preserving LoRA: training, merge, adapter save/load, export of the merged model."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from msp_callback.export import load_pruned, save_pruned
from msp_callback.lora import SparseLoRAError, sparse_lora, train_adapters
from msp_callback.models import block_linears, find_blocks, fingerprint
from msp_callback.nm import check_pattern, mask_of, to_out_in
from msp_callback.plan import SparsityPlan
from msp_callback.pruner import prune

from .conftest import tiny_model, token_batches

TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "gpt2": ["c_attn", "c_proj", "c_fc"]}
X = token_batches(1, 16, batch=2, seed=7)[0]


def pruned(arch: str):
    model = tiny_model(arch)
    plan = SparsityPlan(m=4, target=2, levels=[3, 1, 2], criterion="magnitude", fingerprint=fingerprint(model))
    prune(model, plan, None, progress=False)
    return model, plan


def train(model, steps: int = 5) -> None:
    losses = train_adapters(model, token_batches(steps, 16, batch=2, seed=11), lr=1e-2, progress=False)
    assert len(losses) == steps


def assert_follows_plan_exactly(model, plan) -> None:
    for index, (block, level) in enumerate(zip(find_blocks(model), plan.levels)):
        for name, module in block_linears(block).items():
            check_pattern(to_out_in(module, module.weight.detach()), level, plan.m, f"block {index} {name}", exact=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_trained_sparse_lora_merges_exactly_and_keeps_the_plan(arch):
    model, plan = pruned(arch)
    with torch.no_grad():
        before = model(X).logits
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[arch], lora_dropout=0.0,
                        fan_in_fan_out=arch == "gpt2")
    peft_model = get_peft_model(model, config)
    assert len(sparse_lora(peft_model)) == 3 * (7 if arch == "llama" else 4)
    train(peft_model)
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(X).logits
    assert (adapted - before).abs().max() > 1e-3  # the adapter learned something
    merged = peft_model.merge_and_unload()
    assert not any(hasattr(m, "lora_A") for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(X).logits, adapted, rtol=0, atol=1e-4)
    assert_follows_plan_exactly(merged, plan)


def test_masked_update_is_what_the_forward_trains():
    """The forward equals a dense layer whose weight is (W + B A s) * mask, for every linear."""
    model, _ = pruned("llama")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "down_proj"], lora_dropout=0.0))
    sparse_lora(peft_model)
    train(peft_model, 2)
    layer = peft_model.base_model.model.model.layers[0].mlp.down_proj
    base = layer.get_base_layer()
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
    expected_weight = (base.parametrizations.weight.original + delta) * mask_of(base)
    h = torch.randn(3, base.in_features)
    with torch.no_grad():
        torch.testing.assert_close(layer(h), h @ expected_weight.T, rtol=1e-5, atol=1e-5)


def test_without_sparse_lora_peft_merge_loses_the_update():
    """The trap sparse_lora exists for (peft on a parametrized base), kept as a regression check."""
    model, _ = pruned("llama")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.0))
    train(peft_model, 2)
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(X).logits
        merged = peft_model.merge_and_unload()(X).logits
    assert (merged - adapted).abs().max() > 1e-3


def test_adapter_save_load_then_merge_and_export(tmp_path):
    model, plan = pruned("llama")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=TARGETS["llama"], lora_dropout=0.0))
    sparse_lora(peft_model)
    train(peft_model, 3)
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(X).logits
    peft_model.save_pretrained(tmp_path / "adapter")

    fresh, _ = pruned("llama")
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    sparse_lora(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X).logits, adapted, rtol=0, atol=1e-5)
    merged = loaded.merge_and_unload()
    save_pruned(merged, tmp_path / "export", plan)
    reloaded, _ = load_pruned(tmp_path / "export")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(X).logits, adapted, rtol=0, atol=1e-4)
    assert_follows_plan_exactly(reloaded, SparsityPlan(m=4, target=2, levels=[3, 1, 2]))


def test_unmerge_restores_the_adapted_model():
    model, _ = pruned("llama")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["v_proj"], lora_dropout=0.0))
    sparse_lora(peft_model)
    train(peft_model, 2)
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(X).logits
        peft_model.merge_adapter()
        torch.testing.assert_close(peft_model(X).logits, adapted, rtol=0, atol=1e-5)
        peft_model.unmerge_adapter()
        torch.testing.assert_close(peft_model(X).logits, adapted, rtol=0, atol=1e-5)


def test_bad_setups_fail_clearly():
    dense = tiny_model("llama")
    with pytest.raises(SparseLoRAError, match="get_peft_model"):
        sparse_lora(dense)
    with pytest.raises(SparseLoRAError, match="prune the model"):
        sparse_lora(get_peft_model(dense, LoraConfig(r=2, target_modules=["q_proj"])))
    model, _ = pruned("llama")
    with pytest.raises(SparseLoRAError, match="lora_bias"):
        sparse_lora(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], lora_bias=True)))
    model, _ = pruned("llama")
    with pytest.raises(SparseLoRAError, match="DoRA"):
        sparse_lora(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)))
