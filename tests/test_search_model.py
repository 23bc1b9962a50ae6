"""The search on a tiny model: level cache, fitness, allocations, resume."""

import copy
import json

import pytest
import torch

from msp_callback.allocation import make_plan
from msp_callback.evaluate import perplexity
from msp_callback.models import block_linears, find_blocks
from msp_callback.nm import check_pattern, to_out_in
from msp_callback.plan import SparsityPlan
from msp_callback.pruner import prune
from msp_callback.search.level_cache import LevelCache
from msp_callback.search.runner import SearchSettings

from .conftest import tiny_model, token_batches


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_level_cache_matches_block_pruning(criterion):
    """Every level the cache writes has the N:M pattern; for magnitude (input-free) it equals
    pruning the whole model at that level."""
    model = tiny_model("llama")
    batches = token_batches(2)
    cache = LevelCache(model, criterion, 4, batches, progress=False)
    dense = copy.deepcopy(model)
    for levels in ([1, 2, 3], [4, 0, 2], [0, 0, 0]):
        cache.apply(levels)
        for i, block in enumerate(find_blocks(model)):
            for name, mod in block_linears(block).items():
                check_pattern(to_out_in(mod, mod.weight), levels[i], 4, name)
    if criterion == "magnitude":
        cache.apply([2, 2, 2])
        prune(dense, SparsityPlan.uniform(2, 4, 3, criterion="magnitude"), progress=False)
        batch = batches[0]
        torch.testing.assert_close(model(input_ids=batch).logits, dense(input_ids=batch).logits, rtol=0, atol=0)
    cache.restore_dense()


def test_level_cache_only_rewrites_changed_blocks(llama):
    cache = LevelCache(llama, "magnitude", 4, None, progress=False)
    assert cache.apply([1, 2, 3]) == [0, 1, 2]
    assert cache.apply([1, 2, 2]) == [2]
    assert cache.apply([1, 2, 2]) == []


@pytest.mark.parametrize("allocation", ["uniform", "owl", "fisher", "msp"])
def test_allocations_meet_the_budget(allocation):
    model = tiny_model("llama")
    batches = token_batches(2)
    search = SearchSettings(population=4, generations=2)
    plan = make_plan(allocation, model, 2, 4, "wanda", calibration=batches, search=search, progress=False)
    assert plan.allocation == allocation and sum(plan.levels) == 6
    assert all(0 <= lv <= 4 for lv in plan.levels)


def test_msp_search_improves_on_its_initial_population_and_resumes(tmp_path):
    model = tiny_model("llama")
    batches = token_batches(2)
    fitness = torch.cat(token_batches(2, seed=9))
    ckpt = tmp_path / "ckpt.json"
    full = make_plan("msp", model, 2, 4, "wanda", calibration=batches, fitness_windows=fitness, seed=1,
                     search=SearchSettings(search="paper", population=6, generations=4), progress=False)
    history = full.metadata["history"]
    assert history[-1]["best_fitness"] <= history[0]["best_fitness"]
    assert full.metadata["fitness_evaluations"] <= 6 + 4 * 3
    # the model is left dense
    assert perplexity(model, fitness, progress=False) == pytest.approx(perplexity(tiny_model("llama"), fitness, progress=False))

    # interrupted after generation 2, then resumed: same plan
    class Stop(Exception):
        pass

    from msp_callback.search import runner

    def stop_at_two(search):
        if search.generation == 2:
            raise Stop

    settings = SearchSettings(search="paper", population=6, generations=4, search_checkpoint=str(ckpt))
    with pytest.raises(Stop):
        runner.search_plan(model, 2, 4, "wanda", batches, fitness, settings, seed=1, progress=False, on_generation=stop_at_two)
    assert json.loads(ckpt.read_text())["search"]["generation"] == 2
    settings.resume = True
    resumed = runner.search_plan(model, 2, 4, "wanda", batches, fitness, settings, seed=1, progress=False)
    assert resumed.levels == full.levels
    assert [h["best_fitness"] for h in resumed.metadata["history"]] == [h["best_fitness"] for h in history]
    # single fidelity: cost = evaluations, also across the resume
    assert full.metadata["fitness_cost"] == full.metadata["fitness_evaluations"] == resumed.metadata["fitness_cost"]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gemma3_mixed", "opt", "gpt2"])
def test_prefix_cached_fitness_equals_plain_perplexity(arch):
    from msp_callback.search.fitness import PerplexityFitness

    model = tiny_model(arch)
    windows = torch.cat(token_batches(3, seqlen=16, seed=4))
    cache = LevelCache(model, "wanda", 4, token_batches(2), progress=False)
    fitness = PerplexityFitness(model, cache, windows, batch_size=2)
    individuals = [[2, 2, 2], [2, 2, 2], [2, 3, 1], [1, 3, 2], [4, 0, 2], [0, 0, 0]]
    for levels in individuals:
        got = fitness.evaluate(levels)
        cache.apply(levels)
        assert got == pytest.approx(perplexity(model, windows, 2, progress=False), rel=1e-5), (arch, levels)
    # [2,2,2] twice: nothing re-run; [2,3,1] after [2,2,2]: blocks 1-2 only
    assert fitness.blocks_run == 3 + 0 + 2 + 3 + 3 + 3
    assert len(find_blocks(model)) == 3  # the real blocks are back


def test_fitnesses_sharing_one_level_cache_stay_exact():
    """Two fitnesses interleaved on one cache: each block-prefix cache follows its own levels,
    so neither is fooled by the other having moved the cache (it was, before the fix: [2,3,1]
    after the other's [2,2,1] looked like a change of block 1 only)."""
    from msp_callback.search.fitness import PerplexityFitness

    model = tiny_model("llama")
    windows = torch.cat(token_batches(3, seqlen=16, seed=4))
    cache = LevelCache(model, "wanda", 4, token_batches(2), progress=False)
    first, second = (PerplexityFitness(model, cache, w, batch_size=1) for w in (windows[:1], windows[1:]))
    for a, b in [([2, 2, 2], [2, 2, 1]), ([2, 3, 1], [4, 0, 2]), ([2, 3, 1], [0, 0, 0]), ([1, 3, 2], [1, 3, 2])]:
        for fitness, levels in ((first, a), (second, b)):
            got = fitness.evaluate(levels)
            cache.apply(levels)
            assert got == pytest.approx(perplexity(model, fitness.windows, progress=False), rel=1e-5), levels
        cache.restore_dense()


def test_kl_fitness_is_zero_when_dense_and_matches_direct_computation():
    from msp_callback.search.fitness import KLFitness

    model = tiny_model("llama")
    windows = torch.cat(token_batches(2, seqlen=16, seed=4))
    dense_logp = model(input_ids=windows).logits.log_softmax(-1)
    cache = LevelCache(model, "magnitude", 4, None, progress=False)
    fitness = KLFitness(model, cache, windows, batch_size=2, top_k=8)
    assert fitness.evaluate([0, 0, 0]) == pytest.approx(0.0, abs=1e-6)
    got = fitness.evaluate([3, 1, 2])
    cache.apply([3, 1, 2])
    pruned_logp = model(input_ids=windows).logits.log_softmax(-1)
    top, index = dense_logp.topk(8, dim=-1)
    expected = (top.exp() * (top - pruned_logp.gather(-1, index))).sum(-1).mean().item()
    assert got == pytest.approx(expected, rel=1e-4) and got > 0


def test_msp_search_with_kl_fitness():
    model = tiny_model("llama")
    plan = make_plan("msp", model, 2, 4, "wanda", calibration=token_batches(2), progress=False,
                     search=SearchSettings(population=4, generations=2, fitness="kl"))
    assert sum(plan.levels) == 6 and plan.metadata["search"]["fitness"] == "kl"
    with pytest.raises(ValueError, match="fitness .*must be one of ppl, kl, got 'x'"):
        make_plan("msp", model, 2, 4, "wanda", calibration=token_batches(2), progress=False,
                  search=SearchSettings(fitness="x"))


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_level_cache_storage_changes_where_not_what(criterion, monkeypatch):
    """The same plan whether the cache lives beside the model, in CPU memory or on disk; disk
    tensors are memory-mapped files, removed when the search ends; auto falls back to disk."""
    from msp_callback import storage

    batches, fitness = token_batches(2), torch.cat(token_batches(2, seed=9))
    plans = {}
    for kind in ("device", "cpu", "disk"):
        plans[kind] = make_plan("msp", tiny_model("llama"), 2, 4, criterion, calibration=batches, fitness_windows=fitness,
                                seed=1, search=SearchSettings(population=4, generations=2, cache_storage=kind),
                                progress=False)
    assert plans["device"].levels == plans["cpu"].levels == plans["disk"].levels
    assert plans["device"].metadata["best_fitness"] == plans["disk"].metadata["best_fitness"]

    model = tiny_model("llama")
    cache = LevelCache(model, criterion, 4, batches, progress=False, storage="disk")
    first = next(iter(cache.dense[0].values()))
    folder = cache.store.folder
    assert first.untyped_storage().filename.startswith(str(folder)) and not list(folder.glob("msp-*"))
    cache.apply([2, 2, 2])
    cache.close()
    assert not list(folder.glob("msp-*"))  # nothing left behind
    assert torch.equal(model(input_ids=batches[0]).logits, tiny_model("llama")(input_ids=batches[0]).logits)

    monkeypatch.setattr(storage, "available_bytes", lambda device: 1000)
    assert LevelCache(tiny_model("llama"), criterion, 4, batches, progress=False, storage="auto").store.kind == "disk"


def test_search_defaults_follow_the_search():
    default = SearchSettings().resolved(4)
    assert (default.search, default.granularity, default.fitness, default.screen_windows) == ("level-switch", "block", "ppl", 1)
    paper = SearchSettings(search="paper").resolved(4)  # --search paper alone is the paper's algorithm
    assert (paper.fitness, paper.screen_windows) == ("ppl", 0)
    assert SearchSettings().resolved(1).screen_windows == 0  # one fitness window: nothing to screen on
    chosen = SearchSettings(fitness="ppl", screen_windows=2).resolved(4)
    assert (chosen.fitness, chosen.screen_windows) == ("ppl", 2)


def test_searches_sharing_one_level_cache_find_what_each_finds_alone():
    model = tiny_model("llama")
    dense = copy.deepcopy(model.state_dict())
    batches, fitness = token_batches(2), torch.cat(token_batches(2, seed=5))
    searches = [SearchSettings(search="paper", population=4, generations=2),
                SearchSettings(population=4, generations=2)]
    alone = [make_plan("msp", model, 2, 4, "wanda", calibration=batches, fitness_windows=fitness, search=s,
                       progress=False).levels for s in searches]
    cache = LevelCache(model, "wanda", 4, batches, progress=False)
    shared = [make_plan("msp", model, 2, 4, "wanda", calibration=batches, fitness_windows=fitness, search=s,
                        progress=False, level_cache=cache).levels for s in searches]
    assert shared == alone
    assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())  # left dense between searches
    with pytest.raises(ValueError, match="built for wanda at M=4.*magnitude at M=4"):
        make_plan("msp", model, 2, 4, "magnitude", calibration=batches, fitness_windows=fitness, level_cache=cache)
    with pytest.raises(ValueError, match="another model"):
        make_plan("msp", tiny_model("llama"), 2, 4, "wanda", calibration=batches, fitness_windows=fitness,
                  level_cache=cache)
    cache.close()


def test_wanda_level_cache_uses_dense_model_inputs_and_runs_each_block_once():
    """The cached Wanda weights equal Wanda computed by hand from the inputs each linear sees in a
    forward of the dense model; building the cache runs every block once per batch."""
    model = tiny_model("llama")
    batches = token_batches(2)
    sq_norms: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(mod, args, out):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sq_norms[name] = sq_norms.get(name, 0) + (x * x).sum(0)
        return hook

    linears = {f"{i}.{n}": mod for i, b in enumerate(find_blocks(model)) for n, mod in block_linears(b).items()}
    handles = [mod.register_forward_hook(record(name)) for name, mod in linears.items()]
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch)
    for h in handles:
        h.remove()
    calls = []
    counters = [b.register_forward_pre_hook(lambda *_: calls.append(1)) for b in find_blocks(model)]
    cache = LevelCache(model, "wanda", 4, batches, progress=False)
    for h in counters:
        h.remove()
    assert len(calls) == len(find_blocks(model)) * len(batches)
    for key, mod in linears.items():
        block, name = key.split(".", 1)
        w = mod.weight.detach().double()
        scores = (w.abs() * sq_norms[key].sqrt()).reshape(w.shape[0], -1, 4)
        drop = scores.argsort(-1)[..., :2]  # the 2 lowest of each 4 consecutive inputs
        expected = w.reshape(w.shape[0], -1, 4).scatter(-1, drop, 0.0).reshape(w.shape)
        torch.testing.assert_close(cache.weight(int(block), name, 2).double(), expected, rtol=0, atol=0)
    cache.close()


def test_fisher_allocation_takes_the_trace_strength_of_the_search_settings():
    from msp_callback.config import SearchSettings

    model = tiny_model("llama")
    traces = [1.0, 10.0, 100.0]
    plan = make_plan("fisher", model, 2, 4, "wanda", traces=traces, search=SearchSettings(trace_strength=0.0))
    assert plan.metadata["trace_strength"] == 0.0 and plan.levels == [2, 2, 2]  # strength 0: uniform
    assert make_plan("fisher", model, 2, 4, "wanda", traces=traces).metadata["trace_strength"] == 1.0


def test_level_cache_reads_stored_weights_not_masked_ones(monkeypatch):
    """Under DDP every linear carries an all-kept mask before pruning: reading ``mod.weight`` for a
    shape or dtype computes weight * mask (and under enable_grad an autograd graph) for every
    linear, and the cache kept those copies. It must read the stored weights."""
    from msp_callback.criteria import get_criterion
    from msp_callback.integrations.engine import install_identity_masks
    from msp_callback.nm import NMMask, stored_weight

    model = tiny_model("llama")
    install_identity_masks(model)
    masked = []
    forward = NMMask.forward
    monkeypatch.setattr(NMMask, "forward", lambda self, weight: (masked.append(1), forward(self, weight))[1])
    linears = [block_linears(b) for b in find_blocks(model)]
    LevelCache.estimated_bytes(linears, get_criterion("wanda"), 4)
    assert masked == []
    with torch.enable_grad():
        cache = LevelCache(model, "wanda", 4, token_batches(2), progress=False)
    for block, like in zip(linears, cache._like):
        for name, module in block.items():
            assert like[name] is stored_weight(module) and like[name].grad_fn is None


def test_level_cache_masks_where_the_weight_goes_and_frees_its_memory_when_closed(monkeypatch):
    """With the cache in (pinned) CPU memory and the model on a GPU, the dense weight and its rank
    bytes travel and the mask is applied on the device (here the meta device stands in for it);
    closing drops the cached tensors and hands pinned memory back."""
    from msp_callback import storage

    model = tiny_model("llama")
    cache = LevelCache(model, "wanda", 4, token_batches(2), progress=False, storage="cpu")
    expected = cache.weight(0, "mlp.down_proj", 2)
    on_device = cache.weight(0, "mlp.down_proj", 2, torch.device("meta"))
    assert on_device.device.type == "meta" and on_device.shape == expected.shape
    cache.close()
    assert cache.dense == [] and cache.ranks == []
    released = []
    monkeypatch.setattr(storage, "release_pinned_memory", lambda: released.append(1))
    storage.TensorStore("cpu", torch.device("cuda")).close()
    storage.TensorStore("cpu", torch.device("cpu")).close()
    assert released == [1]


def test_auto_storage_counts_idle_allocator_memory_and_the_search_s_working_set(monkeypatch):
    """Memory PyTorch's caching allocator reserved but does not use is free to PyTorch (the driver
    does not count it); the fitness's logits and SparseGPT's scratch must fit beside the cache."""
    from msp_callback import storage
    from msp_callback.criteria import get_criterion
    from msp_callback.search.runner import fitness_scratch_bytes

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 10_000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1000)
    assert storage.available_bytes(cuda) == 3000
    assert storage.choose_storage(2000, cuda) == "device"
    assert storage.choose_storage(2000, cuda, working=1000) == "cpu"
    model = tiny_model("llama")
    assert fitness_scratch_bytes(model, torch.zeros(4, 16, dtype=torch.long), 2) == 3 * 2 * 16 * 128 * 4
    linears = [block_linears(b) for b in find_blocks(model)]
    assert LevelCache.scratch_bytes(linears, get_criterion("sparsegpt"), 4) > LevelCache.scratch_bytes(
        linears, get_criterion("wanda"), 4) > 128 * 64 * 4


@pytest.mark.parametrize("search", ["level-switch", "paper"])
def test_max_level_bounds_every_level_the_search_tries(search, monkeypatch):
    """With max_level 3 of 4 no individual the search scores prunes a block whole."""
    from msp_callback.search import fitness as fitness_module

    scored = []
    original = fitness_module.FITNESSES["ppl"]

    def recording(*args, **kwargs):
        fit = original(*args, **kwargs)
        inner = fit.__call__

        class Spy:
            def __getattr__(self, name):
                return getattr(fit, name)

            def __call__(self, individuals):
                scored.extend(list(i) for i in individuals)
                return inner(individuals)

        return Spy()

    monkeypatch.setitem(fitness_module.FITNESSES, "ppl", recording)
    plan = make_plan("msp", tiny_model("llama"), 2, 4, "wanda", calibration=token_batches(2), seed=2, progress=False,
                     search=SearchSettings(search=search, population=6, generations=3, max_level=3))
    assert scored and max(max(levels) for levels in scored) <= 3
    assert max(plan.levels) <= 3 and sum(plan.levels) == 2 * 3


def test_max_level_at_n_gives_the_uniform_plan_without_a_search(monkeypatch):
    from msp_callback.search import runner

    monkeypatch.setattr(runner, "LevelCache", None)  # building the search's cache would fail: it must not be built
    plan = make_plan("msp", tiny_model("llama"), 3, 4, "wanda", calibration=token_batches(2), progress=False,
                     search=SearchSettings(max_level=3))
    assert plan.levels == [3, 3, 3] and plan.allocation == "uniform" and "search_skipped" in plan.metadata


def test_the_level_bound_keeps_units_trainable_under_reconstruction():
    settings = SearchSettings()
    assert settings.level_bound(3, 4, reconstructing=False) == 4
    assert settings.level_bound(3, 4, reconstructing=True) == 3
    assert settings.level_bound(2, 4, reconstructing=True) == 3
    assert settings.level_bound(4, 4, reconstructing=True) == 4  # N = M: nothing else meets the budget
    assert SearchSettings(max_level=4).level_bound(2, 4, reconstructing=True) == 4  # asked for: kept
