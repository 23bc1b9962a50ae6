"""Device and precision: bf16 weights prune exactly, with statistics kept in float32."""

import math

import pytest
import torch

from msp_callback import SparsityPlan, prune
from msp_callback.block_walk import collect_input_stats, walk_blocks
from msp_callback.devices import DeviceError, resolve_device, resolve_dtype
from msp_callback.evaluate import perplexity
from msp_callback.models import block_linears, find_blocks
from msp_callback.nm import check_pattern, mask_of, to_out_in

from .conftest import tiny_model, token_batches


def test_defaults_follow_the_machine():
    device = resolve_device(None)
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # no fast bf16 on CPUs
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(DeviceError, match="cuda:99"):
        resolve_device("cuda:99")


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_bf16_weights_prune_exactly_with_float32_statistics(criterion):
    model = tiny_model("llama").to(torch.bfloat16)
    batches = token_batches(2)
    seen = []

    def visit(index, block, inputs):
        linears = block_linears(block)
        stats = collect_input_stats(block, linears, inputs, "gram")
        seen.extend(s.gram.dtype for s in stats.values())

    walk_blocks(model, batches, visit, progress=False)
    assert set(seen) == {torch.float32}
    plan = SparsityPlan(m=4, target=2, levels=[1, 2, 3], criterion=criterion)
    prune(model, plan, batches, progress=False)
    for i, block in enumerate(find_blocks(model)):
        for name, module in block_linears(block).items():
            assert module.weight.dtype == torch.bfloat16
            check_pattern(to_out_in(module, module.weight), plan.levels[i], 4, f"block {i} {name}")
            assert mask_of(module) is not None
    assert math.isfinite(perplexity(model, torch.cat(token_batches(2, seed=4)), progress=False))
