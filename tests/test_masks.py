"""The parametrization: zeros survive training, bake gives the same outputs."""

import copy

import torch

from msp_callback.models import block_linears, find_blocks, measure_sparsity
from msp_callback.nm import check_pattern, install_mask, mask_of, masked_modules, remove_masks, to_out_in
from msp_callback.plan import SparsityPlan
from msp_callback.pruner import prune

from .conftest import token_batches


def _pruned(model, levels=(3, 1, 2), criterion="magnitude"):
    plan = SparsityPlan(m=4, target=2, levels=list(levels), criterion=criterion)
    return prune(model, plan, token_batches(2), progress=False), plan


def _check_plan(model, plan, masks=True):
    for i, block in enumerate(find_blocks(model)):
        for name, module in block_linears(block).items():
            check_pattern(to_out_in(module, module.weight), plan.levels[i], plan.m, name)
            if masks:
                check_pattern(to_out_in(module, mask_of(module)), plan.levels[i], plan.m, name, exact=True)


def test_zeros_survive_adamw_with_weight_decay(llama):
    model, plan = _pruned(llama)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    for batch in token_batches(5, seed=3):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    _check_plan(model, plan)
    assert abs(measure_sparsity(model).pruned_linears - 50.0) < 1e-9


def test_bake_is_plain_module_with_same_outputs(llama):
    model, plan = _pruned(llama)
    batch = token_batches(1, seed=7)[0]
    before = model(input_ids=batch).logits
    assert remove_masks(model, bake=True) == 3 * 7
    assert not list(masked_modules(model))
    assert all(type(m.weight) is torch.nn.Parameter for b in find_blocks(model) for m in block_linears(b).values())
    torch.testing.assert_close(model(input_ids=batch).logits, before, rtol=0, atol=0)
    _check_plan(model, plan, masks=False)


def test_remove_without_bake_restores_stored_weights(llama):
    dense = copy.deepcopy(llama)
    plan = SparsityPlan(m=4, target=2, levels=[2, 2, 2], criterion="magnitude")
    prune(llama, plan, install=True, progress=False)
    # magnitude writes zeros into the stored weights too, so the restored originals are pruned
    remove_masks(llama, bake=False)
    q = find_blocks(llama)[0].self_attn.q_proj.weight
    q_dense = find_blocks(dense)[0].self_attn.q_proj.weight
    assert torch.equal(q != 0, (q_dense != 0) & (q != 0))
    assert (q == 0).float().mean().item() == 0.5


def test_update_mask_in_place(llama):
    model, _ = _pruned(llama)
    module = find_blocks(model)[0].self_attn.q_proj
    buffer = mask_of(module)
    new = torch.ones_like(buffer)
    install_mask(module, new)
    assert mask_of(module) is buffer and bool(buffer.all())
