"""``offload="disk"``: weights, masks and level cache in memory-mapped files, same results."""

import copy

import pytest
import torch

from msp_callback import offload as offload_module
from msp_callback.allocation import make_plan
from msp_callback.config import ConfigError
from msp_callback.job import PruneSettings
from msp_callback.models import find_blocks, named_block_linears
from msp_callback.nm import mask_of
from msp_callback.offload import DiskOffload, OffloadError, check_offload, offload_of, offload_to_disk, release
from msp_callback.plan import SparsityPlan
from msp_callback.pruner import prune
from msp_callback.search.runner import SearchSettings
from msp_callback.sensitivity import fisher_traces

from .conftest import tiny_model, token_batches


@pytest.fixture
def every_tensor(monkeypatch):
    """Offload even the tiny model's small tensors."""
    monkeypatch.setattr(offload_module, "MIN_BYTES", 0)


def _mapped_files() -> list[tuple[int, int, str]]:
    """(start, end, path) of every file mapping of this process (Linux)."""
    out = []
    for line in open("/proc/self/maps"):
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            out.append((start, end, fields[5].strip()))
    return out


def _file_backed(model, offload) -> bool:
    """Every float tensor of ``model`` is one of ``offload``'s, and lies in a shared mapping of a
    (deleted) file in its folder."""
    maps = _mapped_files()
    folder = str(offload.store.folder)
    for t in [*model.parameters(), *model.buffers()]:
        if t.dtype == torch.int64:
            continue
        ptr = t.data_ptr()
        if not offload.holds(t) or not any(a <= ptr < b and path.startswith(folder) for a, b, path in maps):
            return False
    return True


def test_offloaded_model_gives_the_same_logits_from_files(every_tensor, tmp_path):
    model = tiny_model("llama")
    ids = token_batches(1, 16)[0]
    expected = model(input_ids=ids).logits
    offload = offload_to_disk(model, tmp_path)
    assert offload_of(model) is offload and _file_backed(model, offload)
    assert offload.store.folder == tmp_path and list(tmp_path.iterdir()) == []  # unlinked once mapped: nothing is left
    assert model.lm_head.weight is model.model.embed_tokens.weight or not model.config.tie_word_embeddings
    assert torch.equal(model(input_ids=ids).logits, expected)
    release(model)
    assert offload_of(model) is None and list(tmp_path.iterdir()) == []
    assert torch.equal(model(input_ids=ids).logits, expected)  # still readable after release


def test_pruning_an_offloaded_model_keeps_masks_on_disk_and_matches_memory(every_tensor, tmp_path):
    memory, disk = tiny_model("llama"), tiny_model("llama")
    offload = offload_to_disk(disk, tmp_path)
    calib = token_batches(2, 16)
    plan = SparsityPlan(m=4, target=2, levels=[1, 3, 2], criterion="wanda")
    prune(memory, plan, calib, progress=False)
    prune(disk, plan, calib, progress=False)
    assert _file_backed(disk, offload)  # the masks prune installed went to files too
    for (name, a), (_, b) in zip(named_block_linears(memory).items(), named_block_linears(disk).items()):
        assert torch.equal(a.weight, b.weight), name
        assert torch.equal(mask_of(a), mask_of(b)), name
    offload.close()


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_search_on_an_offloaded_model_finds_the_same_plan(every_tensor, tmp_path, criterion):
    calib, fitness = token_batches(2, 16), torch.cat(token_batches(2, 16, seed=1))
    search = SearchSettings(population=4, generations=2, cache_storage="disk")
    plans = []
    for offloaded in (False, True):
        model = tiny_model("llama")
        if offloaded:
            offload_to_disk(model, tmp_path)
        before = copy.deepcopy(model.state_dict())
        plan = make_plan("msp", model, 2, 4, criterion, calibration=calib, fitness_windows=fitness, search=search,
                         progress=False)
        plans.append(plan.levels)
        for key, value in model.state_dict().items():  # the search leaves the model dense
            assert torch.equal(value, before[key]), key
    assert plans[0] == plans[1]


def test_fisher_traces_of_an_offloaded_model_match(every_tensor, tmp_path):
    calib = token_batches(2, 16)
    expected = fisher_traces(tiny_model("llama"), calib, progress=False).block_traces
    model = tiny_model("llama")
    offload_to_disk(model, tmp_path)
    got = fisher_traces(model, calib, progress=False, gradient_checkpointing=True).block_traces
    assert got == pytest.approx(expected, rel=1e-5)


def test_large_tensors_only_by_default(tmp_path):
    model = tiny_model("llama")  # every tensor of the tiny model is below MIN_BYTES
    offload = offload_to_disk(model, tmp_path)
    assert offload.bytes == 0 and not _file_backed(model, offload)


def test_unknown_offload_values_are_refused():
    with pytest.raises(OffloadError, match="none, disk"):
        check_offload("nvme")
    with pytest.raises(ConfigError, match="offload"):
        PruneSettings(offload="nvme")


# --- blocks that travel to the device for their turn (the GPU path, run here with always_copy)


def _travelling(tmp_path):
    """A model whose blocks travel for every forward; ``model.travel_log`` records, per block
    forward, whether every block tensor was a device copy (not a file) during it."""
    model = tiny_model("llama")
    offload = offload_to_disk(model, tmp_path, always_copy=True)
    model.travel_log = []
    for block in find_blocks(model):
        block.register_forward_pre_hook(lambda module, args: model.travel_log.append(
            not any(offload.holds(t) for t in [*module.parameters(), *module.buffers()])))
    return model, offload


def test_travelling_blocks_give_the_same_logits_and_go_home_after(every_tensor, tmp_path):
    ids = token_batches(1, 16)[0]
    expected = tiny_model("llama")(input_ids=ids).logits
    model, offload = _travelling(tmp_path)
    homes = {id(t): t.data_ptr() for t in model.parameters()}
    assert torch.equal(model(input_ids=ids).logits, expected)
    assert model.travel_log == [True] * 3  # each block ran on copies...
    assert {id(t): t.data_ptr() for t in model.parameters()} == homes  # ...and is back in its files
    assert not offload._homes and _file_backed(model, offload)


def test_pruning_travelling_blocks_writes_weights_and_masks_back_to_the_files(every_tensor, tmp_path):
    memory = tiny_model("llama")
    model, offload = _travelling(tmp_path)
    calib = token_batches(2, 16)
    plan = SparsityPlan(m=4, target=2, levels=[1, 3, 2], criterion="sparsegpt")
    prune(memory, plan, calib, progress=False)
    prune(model, plan, calib, progress=False)
    assert model.travel_log and all(model.travel_log)
    assert not offload._homes and _file_backed(model, offload)
    for (name, a), (_, b) in zip(named_block_linears(memory).items(), named_block_linears(model).items()):
        assert torch.equal(a.weight, b.weight), name
        assert torch.equal(mask_of(a), mask_of(b)), name


def test_search_with_travelling_blocks_finds_the_same_plan(every_tensor, tmp_path):
    calib, fitness = token_batches(2, 16), torch.cat(token_batches(2, 16, seed=1))
    search = SearchSettings(population=4, generations=2, cache_storage="disk")
    expected = make_plan("msp", tiny_model("llama"), 2, 4, "wanda", calibration=calib, fitness_windows=fitness,
                         search=search, progress=False)
    model, offload = _travelling(tmp_path)
    got = make_plan("msp", model, 2, 4, "wanda", calibration=calib, fitness_windows=fitness, search=search,
                    progress=False)
    assert got.levels == expected.levels and got.metadata["best_fitness"] == expected.metadata["best_fitness"]
    assert model.travel_log and all(model.travel_log) and not offload._homes


def test_a_block_that_fails_mid_forward_still_goes_home(every_tensor, tmp_path, monkeypatch):
    model, offload = _travelling(tmp_path)
    block = find_blocks(model)[1]

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(block.mlp, "forward", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        model(input_ids=token_batches(1, 16)[0])
    assert not offload._homes and _file_backed(model, offload)


def test_write_back_copies_only_the_tensors_that_changed(every_tensor, tmp_path):
    model, offload = _travelling(tmp_path)
    block = find_blocks(model)[0]
    weight = block.mlp.down_proj.weight
    expected = weight.detach().clone() * 2
    with offload.onloaded(block, write_back=True):
        pass
    assert offload.written_bytes == 0  # nothing changed: nothing copied back
    with offload.onloaded(block, write_back=True), torch.no_grad():
        weight.mul_(2)
    assert offload.written_bytes == weight.numel() * weight.element_size()
    assert offload.holds(weight) and torch.equal(weight, expected)


def test_forwards_prefetch_the_next_block_and_a_stale_prefetch_is_dropped(every_tensor, tmp_path):
    ids = token_batches(1, 16)[0]
    memory = tiny_model("llama")
    model, offload = _travelling(tmp_path)
    blocks = find_blocks(model)
    ahead = []  # while block i runs, is block i+1 already on its way?
    for block, following in zip(blocks, [*blocks[1:], None]):
        block.register_forward_pre_hook(lambda module, args, following=following: ahead.append(
            following is None or (offload._prefetched is not None and offload._prefetched[0] == id(following))))
    block_bytes = sum(t.numel() * t.element_size() for b in blocks for t in [*b.parameters(), *b.buffers()])
    assert torch.equal(model(input_ids=ids).logits, memory(input_ids=ids).logits)
    assert ahead == [True] * len(blocks) and offload.copied_bytes == block_bytes  # each block copied once

    weight = blocks[1].mlp.down_proj.weight
    offload.prefetch(blocks[1])
    with torch.no_grad():  # the file changes after the prefetch (as the search's level cache writes them)
        weight.zero_()
        find_blocks(memory)[1].mlp.down_proj.weight.zero_()
    with offload.onloaded(blocks[1]):
        assert not offload.holds(weight) and not weight.any()  # copied again, not the stale prefetch
    offload.prefetch(blocks[2])
    assert torch.equal(model(input_ids=ids).logits, memory(input_ids=ids).logits)  # block 0's onload dropped it


def test_bf16_offload_matches_loading_in_bf16(every_tensor, tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_model("llama").save_pretrained(tmp_path / "model")
    expected = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype="auto")
    offload_to_disk(model, tmp_path, torch.bfloat16)
    want = dict(expected.named_buffers())
    for name, buffer in model.named_buffers():  # rotary tables stay float32, as from_pretrained keeps them
        assert buffer.dtype == want[name].dtype, name
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    ids = token_batches(1, 16)[0]
    assert torch.equal(model(input_ids=ids).logits, expected(input_ids=ids).logits)


def test_block_traces_of_an_offloaded_model_recompute_activations(every_tensor, tmp_path, monkeypatch):
    from msp_callback import allocation
    from msp_callback.allocation import block_traces

    seen = {}
    real = allocation.fisher_traces

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(allocation, "fisher_traces", spy)
    model = tiny_model("llama")
    offload_to_disk(model, tmp_path)
    assert block_traces(model, token_batches(2, 16), progress=False)
    assert seen["gradient_checkpointing"] is True


def test_fisher_traces_are_refused_for_blocks_offloaded_to_a_gpu(tmp_path):
    model = tiny_model("llama")
    model.__dict__["_msp_offload"] = DiskOffload(tmp_path, device="cuda")  # what offload_to_disk(device="cuda") leaves
    with pytest.raises(OffloadError, match="Fisher traces"):
        fisher_traces(model, token_batches(1, 16), progress=False)


def test_accelerate_device_map_offload_to_cpu_or_disk_is_refused_with_the_way_out(tmp_path):
    """Accelerate keeps modules a device_map sends to "cpu" or "disk" on the meta device outside
    forward: pruning could neither read nor write them. Refused in one line naming --offload disk."""
    from accelerate import dispatch_model

    from msp_callback import MSPCallback
    from msp_callback.models import ModelStructureError

    model = tiny_model("llama")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    calibration = token_batches(2)
    for attempt in (lambda: prune(model, SparsityPlan.uniform(2, 4, 3, criterion="wanda"), calibration, progress=False),
                    lambda: make_plan("msp", model, 2, 4, "wanda", calibration=calibration),
                    lambda: MSPCallback(sparsity="2:4").engine.check_model(model)):
        with pytest.raises(ModelStructureError, match=r"model.layers.1.self_attn.q_proj.weight is on the meta device "
                                                      r"\(Accelerate device_map with cpu and disk entries\).*--offload disk") as error:
            attempt()
        assert "\n" not in str(error.value)
