"""Criteria against independent, straightforward computations."""

import copy

import pytest
import torch

from msp_callback.criteria import CRITERIA, Criterion, InputStats, get_criterion, register_criterion
from msp_callback.models import block_linears, find_blocks
from msp_callback.nm import mask_of
from msp_callback.plan import SparsityPlan
from msp_callback.pruner import prune

from .conftest import token_batches
from .test_nm import brute_force_mask


def _linear_inputs(model, batches, names):
    """Inputs of the named modules, captured with plain forward hooks on a full forward."""
    modules = dict(model.named_modules())
    seen = {n: [] for n in names}
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: seen[n].append(a[0].reshape(-1, a[0].shape[-1])))
               for n in names]
    with torch.no_grad():
        for b in batches:
            model(input_ids=b, use_cache=False)
    for h in handles:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def test_wanda_matches_direct_scores(llama):
    """Block 0 from the dense model; q/k/v of every block from the *pruned* model, whose inputs
    only depend on the (already pruned) blocks before them: this checks the sequential driver."""
    batches = token_batches(3)
    dense = copy.deepcopy(llama)
    plan = SparsityPlan(m=4, target=2, levels=[1, 2, 3], criterion="wanda")
    prune(llama, plan, batches, progress=False)

    block0 = [f"model.layers.0.{n}" for n in block_linears(find_blocks(dense)[0])]
    qkv = [f"model.layers.{i}.self_attn.{p}_proj" for i in range(3) for p in "qkv"]
    expected_inputs = {**_linear_inputs(dense, batches, block0), **_linear_inputs(llama, batches, qkv)}
    modules_dense = dict(dense.named_modules())
    modules_pruned = dict(llama.named_modules())
    for name, x in expected_inputs.items():
        level = plan.levels[int(name.split(".")[2])]
        scores = modules_dense[name].weight.abs() * x.pow(2).sum(0).sqrt()
        assert torch.equal(mask_of(modules_pruned[name]), brute_force_mask(scores, level, 4)), name


def test_sparsegpt_reconstructs_better_than_wanda():
    torch.manual_seed(0)
    # correlated inputs, as real activations are
    x = torch.randn(512, 64) @ torch.randn(64, 64) + 0.5 * torch.randn(512, 64)
    w = torch.randn(32, 64)
    stats = InputStats()
    stats.add(x, "gram")
    for level, m in [(2, 4), (3, 4), (4, 8)]:
        errors = {}
        for name in ("wanda", "sparsegpt"):
            pruned, keep = get_criterion(name).prune_weight(w.clone(), stats, level, m)
            assert (~keep).reshape(32, -1, m).sum(-1).eq(level).all()
            assert torch.equal(pruned == 0, ~keep | (w == 0))
            errors[name] = (x @ (pruned - w).t()).pow(2).sum().item()
        assert errors["sparsegpt"] < errors["wanda"], (level, m, errors)


def _sparsegpt_reference(w, x, level, m, damping=0.01):
    """SparseGPT as the paper's Algorithm 1 writes it, in float64: after each column, its error
    is spread onto every column to its right (no lazy blocks, no stacked levels)."""
    w = w.double().clone()
    h = 2 * x.double().t() @ x.double() / x.shape[0]
    h.diagonal().add_(damping * h.diagonal().mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    keep = torch.ones_like(w, dtype=torch.bool)
    for j in range(w.shape[1]):
        if j % m == 0:
            saliency = w[:, j : j + m] ** 2 / hinv.diagonal()[j : j + m] ** 2
            keep[:, j : j + m] = brute_force_mask(saliency, level, m)
        err = w[:, j] * ~keep[:, j] / hinv[j, j]
        w[:, j:] -= err.unsqueeze(1) * hinv[j, j:].unsqueeze(0)
    return w * keep, keep


@pytest.mark.parametrize("m", [4, 8])
def test_sparsegpt_matches_the_plain_algorithm_at_every_level(m):
    torch.manual_seed(0)
    x = torch.randn(300, 40) @ torch.randn(40, 96) + 0.3 * torch.randn(300, 96)
    w = torch.randn(24, 96)
    stats = InputStats()
    stats.add(x, "gram")
    criterion = get_criterion("sparsegpt", block_size=32)
    levels = criterion.prune_levels(w, stats, range(m), m)
    for level in range(m):
        expected, expected_keep = _sparsegpt_reference(w, x, level, m)
        pruned, keep = levels[level]
        assert torch.equal(keep, expected_keep), level
        assert torch.allclose(pruned.double(), expected, atol=1e-4, rtol=1e-4), level
        single, single_keep = criterion.prune_weight(w, stats, level, m)
        assert torch.equal(single, pruned) and torch.equal(single_keep, keep), level


def test_sparsegpt_level_zero_is_identity():
    w = torch.randn(8, 16)
    stats = InputStats()
    stats.add(torch.randn(40, 16), "gram")
    pruned, keep = get_criterion("sparsegpt").prune_weight(w.clone(), stats, 0, 4)
    assert torch.equal(pruned, w) and bool(keep.all())


def test_registry_accepts_user_criterion(llama):
    @register_criterion
    class Random(Criterion):
        name = "test-random"

        def scores(self, weight, stats):
            return torch.rand(weight.shape, generator=torch.Generator().manual_seed(0))

    try:
        plan = SparsityPlan.uniform(2, 4, 3, criterion="test-random")
        prune(llama, plan, progress=False)
        assert (find_blocks(llama)[1].mlp.up_proj.weight == 0).float().mean() == 0.5
    finally:
        CRITERIA.pop("test-random")


def test_unknown_criterion():
    with pytest.raises(ValueError, match="unknown criterion 'obs'; available: .*magnitude"):
        get_criterion("obs")


def test_sparsegpt_keeps_ieee_float32_when_the_process_allows_tf32(monkeypatch):
    """Lightning and HF users turn TF32 on (``set_float32_matmul_precision("high")`` or lower);
    SparseGPT's Gram matrix and sweep must not follow it, or its masks change with the switch. The
    precision is read inside the sweep; on CPUs with bf16 units ("medium" is bf16 in oneDNN, as on
    this one) the Gram matrix and pruned weights are also compared bit for bit."""
    from msp_callback.criteria.sparsegpt import SparseGPT

    torch.manual_seed(0)
    x, weight = torch.randn(256, 64), torch.randn(32, 64)

    def run():
        stats = InputStats()
        stats.add(x, "gram")
        return stats.gram, SparseGPT().prune_levels(weight, stats, [1, 2, 3], 4)

    gram, pruned = run()
    seen, sweep = [], SparseGPT._sweep

    def observed(self, *args):
        seen.append((torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision))
        return sweep(self, *args)

    monkeypatch.setattr(SparseGPT, "_sweep", observed)
    torch.set_float32_matmul_precision("medium")
    try:
        gram_reduced, pruned_reduced = run()
        after = torch.get_float32_matmul_precision()
    finally:
        torch.set_float32_matmul_precision("highest")
    assert after == "medium"  # the caller's setting is restored
    assert seen == [("ieee", "ieee")]
    assert torch.equal(gram_reduced, gram)
    for level, (w, keep) in pruned.items():
        assert torch.equal(pruned_reduced[level][0], w) and torch.equal(pruned_reduced[level][1], keep)


@pytest.mark.parametrize("arch,groups", [
    ("llama", [{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}, {"self_attn.o_proj"},
               {"mlp.gate_proj", "mlp.up_proj"}, {"mlp.down_proj"}]),
    ("gpt2", [{"attn.c_attn"}, {"attn.c_proj"}, {"mlp.c_fc"}, {"mlp.c_proj"}]),
])
def test_linears_fed_one_input_share_one_statistic_and_one_factorisation(arch, groups, monkeypatch):
    """q/k/v (and gate/up) take the very same tensor: one Gram matrix and one SparseGPT
    factorisation serve them, and the pruned weights are bit for bit those of separate ones."""
    from msp_callback import block_walk
    from msp_callback.block_walk import capture_stack_inputs, collect_input_stats
    from msp_callback.criteria.sparsegpt import SparseGPT

    from .conftest import tiny_model

    model = tiny_model(arch)
    block = find_blocks(model)[0]
    stats = collect_input_stats(block, block_linears(block), capture_stack_inputs(model, token_batches(3)).block(0), "gram")
    found = {}
    for name, s in stats.items():
        found.setdefault(id(s), set()).add(name)
    assert sorted(found.values(), key=sorted) == sorted(groups, key=sorted)

    factored, factor = [], SparseGPT._factor
    monkeypatch.setattr(SparseGPT, "_factor", lambda self, s: (factored.append(1), factor(self, s))[1])
    plan = SparsityPlan(m=4, target=2, levels=[1, 2, 3], criterion="sparsegpt")
    shared = prune(tiny_model(arch), plan, token_batches(3), progress=False)
    assert len(factored) == 3 * len(groups)
    collecting = block_walk._run_collecting
    monkeypatch.setattr(block_walk, "_run_collecting", lambda *a, share, **k: collecting(*a, share=False, **k))
    separate = prune(tiny_model(arch), plan, token_batches(3), progress=False)
    for a, b in zip(find_blocks(shared), find_blocks(separate)):
        for name, module in block_linears(a).items():
            assert torch.equal(module.weight, block_linears(b)[name].weight), name


def test_linears_that_share_an_input_only_sometimes_get_their_own_statistics():
    from torch import nn

    from msp_callback.block_walk import BlockInputs, collect_input_stats

    class Fork(nn.Module):  # b takes a's very input only when it sums positive, else a copy of it
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.a(x) + self.b(x if x.sum() > 0 else x.clone())

    x1, x2 = torch.ones(1, 4, 8), -torch.ones(1, 4, 8)
    block = Fork()
    stats = collect_input_stats(block, {"a": block.a, "b": block.b}, BlockInputs([x1, x2], [(), ()], [{}, {}]), "gram")
    assert stats["a"] is not stats["b"] and stats["a"].count == stats["b"].count == 8
    assert torch.equal(stats["a"].gram, stats["b"].gram) and torch.equal(stats["a"].gram, torch.full((8, 8), 8.0))
