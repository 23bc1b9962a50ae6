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


def test_auto_dtype_is_bf16_only_on_gpus_with_bf16_units(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on a T4 (7.5) or V100 (7.0), where bf16 is emulated
    and slow, and asks the current device: auto must read the chosen device's compute capability."""
    capability = {0: (8, 0), 1: (7, 5), 2: (9, 0), 3: (7, 0)}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: capability[torch.device(device).index or 0] if device is not None else capability[0])
    chosen = {index: resolve_dtype("auto", torch.device("cuda", index)) for index in capability}
    assert chosen == {0: torch.bfloat16, 1: torch.float32, 2: torch.bfloat16, 3: torch.float32}
