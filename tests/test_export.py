"""Export: plain transformers round trip, library reload with masks, removal of level-M blocks."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from msp_callback.export import ExportError, load_pruned, read_record, save_pruned
from msp_callback.models import block_linears, find_blocks, fingerprint, measure_sparsity
from msp_callback.nm import NMPatternError, mask_of
from msp_callback.plan import PlanError, SparsityPlan
from msp_callback.pruner import prune

from .conftest import ARCHITECTURES, tiny_model, token_batches

X = token_batches(1, 16, batch=2, seed=3)[0]


def pruned(arch: str, levels=(4, 2, 0), criterion: str = "magnitude"):
    model = tiny_model(arch)
    plan = SparsityPlan(m=4, target=2, levels=list(levels), criterion=criterion, fingerprint=fingerprint(model))
    prune(model, plan, token_batches(2), progress=False)
    return model, plan


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_level_m_block_removed_and_plain_reload_matches(arch, tmp_path):
    model, plan = pruned(arch)
    with torch.no_grad():
        reference = model(X).logits
    record = save_pruned(model, tmp_path / "out", plan)
    assert record.removed_blocks == [0] and record.kept_blocks == [1, 2]

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert len(find_blocks(plain)) == 2 and plain.config.num_hidden_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(plain(X).logits, reference, rtol=0, atol=1e-5)
    prompt = X[:1, :5]
    expected = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True)
    assert torch.equal(plain.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True), expected)
    assert record.parameters_after < record.parameters_before


def test_gemma_layer_types_follow_the_removed_blocks(tmp_path):
    from transformers import Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    plan = SparsityPlan(m=4, target=2, levels=[2, 4, 0], criterion="magnitude", fingerprint=fingerprint(model))
    prune(model, plan, None, progress=False)
    x = token_batches(1, 24, seed=5)[0]  # longer than the sliding window
    with torch.no_grad():
        reference = model(x).logits
    save_pruned(model, tmp_path / "g", plan)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "g").eval()
    assert plain.config.layer_types == ["sliding_attention", "sliding_attention"]
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, reference, rtol=0, atol=1e-5)
    assert torch.equal(plain.generate(x[:, :12], max_new_tokens=8, do_sample=False),
                       model.generate(x[:, :12], max_new_tokens=8, do_sample=False))


def test_block_with_live_bias_is_kept_and_says_why(tmp_path):
    model, plan = pruned("gpt2")
    with torch.no_grad():
        find_blocks(model)[0].attn.c_proj.bias.fill_(0.1)
        reference = model(X).logits
    record = save_pruned(model, tmp_path / "b", plan)
    assert record.removed_blocks == [] and "attn.c_proj" in record.kept_full_blocks[0]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "b").eval()
    assert len(find_blocks(plain)) == 3
    with torch.no_grad():
        torch.testing.assert_close(plain(X).logits, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("drop", [True, False])
def test_library_reload_reinstalls_the_same_masks(drop, tmp_path):
    model, plan = pruned("llama", criterion="wanda")
    masks = {i: {n: mask_of(m).clone() for n, m in block_linears(b).items()} for i, b in enumerate(find_blocks(model))}
    with torch.no_grad():
        reference = model(X).logits
    save_pruned(model, tmp_path / "w", plan, drop_pruned_blocks=drop)
    loaded, record = load_pruned(tmp_path / "w")
    for j, block in enumerate(find_blocks(loaded)):
        for name, module in block_linears(block).items():
            assert torch.equal(mask_of(module), masks[record.kept_blocks[j]][name])
    with torch.no_grad():
        torch.testing.assert_close(loaded(X).logits, reference, rtol=0, atol=1e-5)
    kept_sparsity = [measure_sparsity(model).per_block[i] for i in record.kept_blocks]
    assert measure_sparsity(loaded).per_block == pytest.approx(kept_sparsity)


def test_model_without_masks_can_be_saved_and_reloaded(tmp_path):
    model, plan = pruned("qwen2", levels=(3, 2, 1))
    from msp_callback.nm import bake

    bake(model)
    save_pruned(model, tmp_path / "baked", plan)
    loaded, record = load_pruned(tmp_path / "baked")
    assert record.removed_blocks == [] and sum(1 for _ in loaded.modules() if mask_of(_) is not None) == 21


def test_failed_save_leaves_no_folder(tmp_path, monkeypatch):
    model, plan = pruned("llama")

    class BrokenTokenizer:
        def save_pretrained(self, path):
            (path / "tokenizer.json").write_text("{")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_pruned(model, tmp_path / "x", plan, tokenizer=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_when_asked(tmp_path):
    model, plan = pruned("llama")
    save_pruned(model, tmp_path / "o", plan)
    with pytest.raises(ExportError, match="exists"):
        save_pruned(model, tmp_path / "o", plan)
    save_pruned(model, tmp_path / "o", plan, drop_pruned_blocks=False, overwrite=True)
    assert read_record(tmp_path / "o").removed_blocks == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_bad_exports_fail_clearly(tmp_path):
    model, plan = pruned("llama")
    other = SparsityPlan(m=4, target=2, levels=[2, 2], criterion="magnitude")
    with pytest.raises(PlanError, match="2 block levels but the model has 3"):
        save_pruned(model, tmp_path / "a", other)
    denser = SparsityPlan(m=4, target=2, levels=[4, 0, 2], criterion="magnitude", fingerprint=plan.fingerprint)
    with pytest.raises(NMPatternError, match="block 2"):
        save_pruned(model, tmp_path / "b", denser)
    all_gone = tiny_model("llama")
    full = SparsityPlan(m=4, target=4, levels=[4, 4, 4], criterion="magnitude")
    prune(all_gone, full, None, progress=False)
    with pytest.raises(ExportError, match="every decoder block"):
        save_pruned(all_gone, tmp_path / "c", full)
    with pytest.raises(ExportError, match="no msp_export.json"):
        load_pruned(tmp_path)
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())


def test_overwrite_never_replaces_a_folder_that_is_not_an_export(tmp_path):
    model, plan = pruned("llama")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an export"):
        save_pruned(model, precious, plan, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_export_is_readable_like_a_normal_folder_and_names_its_architecture(tmp_path):
    import json
    import os

    model, plan = pruned("qwen2")
    save_pruned(model, tmp_path / "r", plan)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r").stat().st_mode & 0o777 == 0o777 & ~umask
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["num_hidden_layers"] == 2


def test_config_that_places_layers_by_index_is_caught(tmp_path):
    """Qwen2-MoE's mlp_only_layers names block indices; after removing block 0 the written config
    would describe other weights, which plain from_pretrained would silently re-initialise."""
    from transformers import Qwen2MoeConfig

    config = Qwen2MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            shared_expert_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
                            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, mlp_only_layers=[0])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    plan = SparsityPlan(m=4, target=2, levels=[4, 2, 0], criterion="magnitude", fingerprint=fingerprint(model))
    prune(model, plan, None, progress=False)
    with pytest.raises(ExportError, match="drop_pruned_blocks=False"):
        save_pruned(model, tmp_path / "moe", plan)
    assert list(tmp_path.iterdir()) == []
    save_pruned(model, tmp_path / "moe", plan, drop_pruned_blocks=False)


def test_load_train_and_export_again(tmp_path):
    """A model loaded with load_pruned is exported again with its record: blocks removed now and
    before are recorded in original indices, and the masks land on the right blocks each time."""
    model, plan = pruned("llama", levels=(4, 2, 0))
    with torch.no_grad():
        reference = model(X).logits
    save_pruned(model, tmp_path / "first", plan, drop_pruned_blocks=False)
    loaded, record = load_pruned(tmp_path / "first")
    with pytest.raises(PlanError, match="another model"):
        save_pruned(tiny_model("gpt2"), tmp_path / "wrong", record)
    second = save_pruned(loaded, tmp_path / "second", record)
    assert second.removed_blocks == [0] and second.kept_blocks == [1, 2]
    again, record2 = load_pruned(tmp_path / "second")
    third = save_pruned(again, tmp_path / "third", record2)
    assert third.removed_blocks == [0] and third.kept_blocks == [1, 2]
    final, _ = load_pruned(tmp_path / "third")
    with torch.no_grad():
        torch.testing.assert_close(final(X).logits, reference, rtol=0, atol=1e-5)
