"""Block discovery and end-to-end pruning on every supported architecture."""

import pytest
import torch
from torch import nn

from msp_callback.block_walk import run_block
from msp_callback.models import ModelStructureError, block_linears, find_blocks, fingerprint, measure_sparsity
from msp_callback.nm import check_pattern, to_out_in
from msp_callback.plan import SparsityPlan
from msp_callback.pruner import prune

from .conftest import ARCHITECTURES, tiny_model, token_batches

EXPECTED_LINEARS = {"llama": 7, "qwen2": 7, "gemma3": 7, "opt": 6, "gpt2": 4}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_prune_every_architecture(arch, criterion):
    model = tiny_model(arch)
    blocks = find_blocks(model)
    assert len(blocks) == 3
    assert len(block_linears(blocks[0])) == EXPECTED_LINEARS[arch]
    plan = SparsityPlan(m=4, target=2, levels=[4, 0, 2], criterion=criterion, fingerprint=fingerprint(model))
    batch = token_batches(1, seed=5)[0]
    prune(model, plan, token_batches(2), progress=False)
    for i, block in enumerate(blocks):
        for name, module in block_linears(block).items():
            check_pattern(to_out_in(module, module.weight), plan.levels[i], 4, f"{arch} {i} {name}")
    stats = measure_sparsity(model)
    assert stats.per_block[0] == 100.0 and stats.per_block[2] == pytest.approx(50.0)
    assert abs(stats.pruned_linears - 50.0) < 1e-9
    assert torch.isfinite(model(input_ids=batch).logits).all()


def test_no_decoder_blocks():
    with pytest.raises(ModelStructureError, match="found no decoder blocks in Sequential"):
        find_blocks(nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10)))


def test_fingerprint_tells_models_apart():
    assert fingerprint(tiny_model("llama")) == fingerprint(tiny_model("llama", seed=1))
    llama, qwen2, opt = (fingerprint(tiny_model(a)) for a in ("llama", "qwen2", "opt"))
    assert llama["architecture"] != qwen2["architecture"]  # same shapes, other architecture
    assert llama["shape_digest"] != opt["shape_digest"]


@pytest.mark.parametrize("arch", ["llama", "gemma3_mixed", "gpt2"])
def test_walk_blocks_reproduces_the_model_own_hidden_states(arch):
    """Each block gets its own call arguments (Gemma's global layer: another mask and rotary
    table), so walking the blocks gives the hidden states of an ordinary forward."""
    from msp_callback.block_walk import walk_blocks

    model = tiny_model(arch)
    batches = token_batches(2, seqlen=24, batch=2, seed=9)
    walked: list[list[torch.Tensor]] = []
    walk_blocks(model, batches, lambda i, block, inputs: walked.append(run_block(block, inputs)), progress=False)
    for b, batch in enumerate(batches):
        with torch.no_grad():
            states = model(input_ids=batch, output_hidden_states=True).hidden_states
        for k in range(len(walked) - 1):  # the last entry of hidden_states is after the final norm
            torch.testing.assert_close(walked[k][b], states[k + 1], rtol=1e-5, atol=1e-5)
