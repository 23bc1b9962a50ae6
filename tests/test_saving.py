"""Every ordinary way of saving a pruned model keeps it pruned (issue 17).

For a tiny Llama and GPT-2 (Conv1D) pruned through `prune`, `MSPTrainerCallback` and `MSPCallback`,
each save way must give, on a plain reload, the same logits and zeros with no missing or unexpected
keys, and on the library's reload the same masks, which one optimizer step keeps.
"""

import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from msp_callback import MSPCallback, MSPTrainerCallback, SparsityPlan, prune
from msp_callback.export import ExportError, load_pruned
from msp_callback.models import block_linears, find_blocks, named_block_linears
from msp_callback.nm import mask_of, remove_masks
from msp_callback.plan import PlanError
from msp_callback.saving import plan_from_config, restore_masks

from .conftest import VOCAB, tiny_model, token_batches
from .test_callbacks import FAST, LitLM, loader, trainer

EAGER = {"attn_implementation": "eager"}  # as the tiny models are built, so logits compare exactly
PROBE = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(11))


def _hf_args(tmp_path, **kwargs):
    return TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True,
                             per_device_train_batch_size=4, learning_rate=1e-2, **kwargs)


def _dataset(rows=8):
    ids = torch.randint(0, VOCAB, (rows, 16), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": row, "labels": row} for row in ids]


def _pruned(arch, how, tmp_path):
    """A pruned tiny model and its plan, pruned the way ``how`` names."""
    model = tiny_model(arch)
    if how == "prune":
        plan = SparsityPlan(m=4, target=2, levels=[1, 2, 3], criterion="wanda")
        prune(model, plan, token_batches(2), progress=False)
        return model, plan
    if how == "MSPTrainerCallback":
        cb = MSPTrainerCallback(sparsity="2:4", allocation="msp", when="fit_start", **FAST)
        Trainer(model=model, args=_hf_args(tmp_path / "hf", max_steps=1, save_strategy="no"),
                train_dataset=_dataset(), callbacks=[cb]).train()
    else:
        lit = LitLM(model)
        cb = MSPCallback(sparsity="2:4", allocation="msp", when="fit_start", **FAST)
        trainer(cb, steps=1).fit(lit, loader())
    return model.eval(), cb.plan


def _logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=PROBE).logits


def _zeros(model):
    return {name: module.weight.detach() == 0 for name, module in named_block_linears(model).items()}


def _masks(model):
    return {name: mask_of(module) for name, module in named_block_linears(model).items()}


# ---------------------------------------------------------------------------- the save ways
def _via_save_pretrained(model, plan, tmp_path, **kwargs):
    model.save_pretrained(tmp_path / "out", **kwargs)
    return _reload_folder(tmp_path / "out")


def _via_trainer_save_model(model, plan, tmp_path):
    Trainer(model=model, args=_hf_args(tmp_path / "args")).save_model(str(tmp_path / "out"))
    return _reload_folder(tmp_path / "out")


def _reload_folder(folder):
    plain, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, **EAGER)
    library, _ = load_pruned(folder, **EAGER)
    return plain, library, info


def _via_torch_save(model, plan, tmp_path):
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    original = tmp_path / "original"
    tiny_model(model.config.model_type, seed=5).save_pretrained(original)  # the dense model it started from

    def fresh():
        return AutoModelForCausalLM.from_pretrained(original, **EAGER)

    plain = fresh()
    info = plain.load_state_dict(torch.load(tmp_path / "weights.pt"))  # strict
    library = fresh()
    library.load_state_dict(torch.load(tmp_path / "weights.pt"))
    restore_masks(library, plan)
    return plain, library, {"missing_keys": info.missing_keys, "unexpected_keys": info.unexpected_keys}


def _via_lightning_checkpoint(model, plan, tmp_path):
    lit = LitLM(model)
    t = pl.Trainer(max_steps=0, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    t.fit(lit, loader())
    t.save_checkpoint(tmp_path / "pruned.ckpt")
    arch = model.config.model_type
    plain = LitLM.load_from_checkpoint(tmp_path / "pruned.ckpt", model=tiny_model(arch, seed=5)).model  # strict
    library = LitLM.load_from_checkpoint(tmp_path / "pruned.ckpt", model=tiny_model(arch, seed=5)).model
    restore_masks(library, plan)
    return plain, library, {}


SAVES = {
    "trainer.save_model": _via_trainer_save_model,
    "save_pretrained": _via_save_pretrained,
    "save_pretrained(safe_serialization=False)": lambda m, p, t: _via_save_pretrained(m, p, t, safe_serialization=False),
    "torch.save(state_dict)": _via_torch_save,
    "lightning save_checkpoint": _via_lightning_checkpoint,
}


def _one_step_keeps_zeros(model):
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model(input_ids=PROBE, labels=PROBE).loss.backward()
    optimizer.step()
    for name, module in named_block_linears(model).items():
        assert not module.weight.detach()[~mask_of(module)].any(), f"{name}: a pruned weight moved"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("how", ["prune", "MSPTrainerCallback", "MSPCallback"])
def test_every_ordinary_save_keeps_the_model_pruned(tmp_path, arch, how):
    model, plan = _pruned(arch, how, tmp_path / "prune")
    for way, save in SAVES.items():
        folder = tmp_path / way.split("(")[0].replace(" ", "_") / ("safe" if "safe" not in way else "bin")
        folder.mkdir(parents=True)
        reference, zeros, masks = _logits(model), _zeros(model), _masks(model)
        plain, library, info = save(model, plan, folder)
        assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), (way, info)
        assert not any(mask_of(m) is not None for m in plain.modules()), way
        assert torch.equal(_logits(plain), reference), way
        assert _zeros(plain).keys() == zeros.keys() and all(torch.equal(_zeros(plain)[k], v) for k, v in zeros.items()), way
        assert all(torch.equal(_masks(library)[k], v) for k, v in masks.items()), way
        assert torch.equal(_logits(library), reference), way
        _one_step_keeps_zeros(library)


def test_checkpoint_files_hold_plain_keys_and_the_plan(tmp_path):
    model, plan = _pruned("gpt2", "prune", tmp_path)
    state = model.state_dict()
    assert not [k for k in state if "parametrizations" in k]
    for name, module in model.named_modules():
        if mask_of(module) is not None:
            assert torch.equal(state[f"{name}.weight"], module.weight.detach())
    model.save_pretrained(tmp_path / "out")
    recorded, removed = plan_from_config(AutoModelForCausalLM.from_pretrained(tmp_path / "out"))
    assert recorded.levels == plan.levels and removed == []


def test_a_plainly_loaded_pruned_model_trains_on_sparse_under_either_callback(tmp_path):
    model, plan = _pruned("llama", "prune", tmp_path / "prune")
    model.save_pretrained(tmp_path / "out")

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    cb = MSPTrainerCallback(sparsity="2:4", allocation="msp", when="fit_start", **FAST)
    Trainer(model=reloaded, args=_hf_args(tmp_path / "hf", max_steps=2, save_strategy="no"),
            train_dataset=_dataset(), callbacks=[cb]).train()
    assert cb.plan.levels == plan.levels  # taken from the config, not searched again
    assert all(torch.equal(_masks(reloaded)[k], v) for k, v in _masks(model).items())

    lit = LitLM(AutoModelForCausalLM.from_pretrained(tmp_path / "out"))
    lcb = MSPCallback(sparsity="2:4", allocation="msp", when="fit_end", **FAST)
    trainer(lcb, steps=2).fit(lit, loader())
    assert lcb.plan.levels == plan.levels
    for name, module in named_block_linears(lit.model).items():
        assert torch.equal(mask_of(module), _masks(model)[name]) and not module.weight.detach()[~mask_of(module)].any()

    with pytest.raises(PlanError, match="pruned to 2:4 .* asks for sparsity '3:4'"):
        Trainer(model=AutoModelForCausalLM.from_pretrained(tmp_path / "out"), args=_hf_args(tmp_path / "x"),
                train_dataset=_dataset(), callbacks=[MSPTrainerCallback(sparsity="3:4", progress=False)])


def test_plain_weights_load_into_a_masked_model_and_older_checkpoints_still_resume(tmp_path):
    model, plan = _pruned("gpt2", "prune", tmp_path)
    masks = _masks(model)
    # a plain state dict into a masked model: the weights land in the masked layers, masks held
    dense = tiny_model("gpt2", seed=3).state_dict()
    info = model.load_state_dict(dense)
    assert not info.missing_keys and not info.unexpected_keys
    assert all(torch.equal(_masks(model)[k], v) for k, v in masks.items())
    for name, module in named_block_linears(model).items():
        assert not module.weight.detach()[~mask_of(module)].any()

    # the older format (parametrization keys) resumes through the callbacks' loader
    old = model.state_dict()
    for name, module in model.named_modules():
        if mask_of(module) is not None:
            old[f"{name}.parametrizations.weight.original"] = old.pop(f"{name}.weight")
            old[f"{name}.parametrizations.weight.0.mask"] = mask_of(module).clone()
    fresh, cb = tiny_model("gpt2", seed=5), MSPTrainerCallback(sparsity="2:4", when="manual", progress=False)
    Trainer(model=fresh, args=_hf_args(tmp_path / "hf"), train_dataset=_dataset(), callbacks=[cb])
    assert not fresh.load_state_dict(old).unexpected_keys
    assert all(torch.equal(_masks(fresh)[k], v) for k, v in masks.items())


def test_restoring_without_a_plan_or_with_a_wrong_one_fails_clearly(tmp_path):
    dense = tiny_model("llama")
    with pytest.raises(PlanError, match="records no pruning plan"):
        restore_masks(dense)
    dense.save_pretrained(tmp_path / "dense")
    with pytest.raises(ExportError, match="holds no pruned model"):
        load_pruned(tmp_path / "dense")
    with pytest.raises(PlanError, match="4 decoder blocks but the model has 3"):
        restore_masks(dense, SparsityPlan(m=4, target=2, levels=[2, 2, 2, 2]))


def test_a_plan_the_weights_no_longer_follow_is_ignored_by_the_callbacks(tmp_path, caplog):
    """Trained dense after baking, or a new model built from a pruned model's config: the recorded
    plan is stale; the callback says so and prunes as usual instead of failing."""
    model, _ = _pruned("llama", "prune", None)
    remove_masks(model, bake=True)
    assert plan_from_config(model) is not None  # baked: the zeros are still there
    fresh = AutoModelForCausalLM.from_config(model.config)  # random weights, the pruned config
    cb = MSPTrainerCallback(sparsity="2:4", allocation="uniform", criterion="magnitude", when="fit_start", progress=False)
    with caplog.at_level("WARNING"):
        Trainer(model=fresh, args=_hf_args(tmp_path, max_steps=1, save_strategy="no"), train_dataset=_dataset(),
                callbacks=[cb]).train()
    assert "do not follow" in caplog.text
    assert cb.plan.levels == [2, 2, 2] and all(mask_of(m) is not None for m in named_block_linears(fresh).values())


def test_the_jobs_dense_restore_forgets_the_plan():
    from msp_callback.job import Inputs

    model = tiny_model("llama")
    inputs = Inputs(model, None, token_batches(2), torch.cat(token_batches(2)), torch.cat(token_batches(2)))
    restore = inputs.dense_snapshot()
    prune(model, SparsityPlan(m=4, target=2, levels=[1, 2, 3], criterion="wanda"), token_batches(2), progress=False)
    assert plan_from_config(model) is not None
    restore()
    assert plan_from_config(model) is None and not any(mask_of(m) for m in named_block_linears(model).values())


def test_saving_never_changes_the_model():
    model, _ = _pruned("llama", "prune", None)
    module = find_blocks(model)[0].self_attn.q_proj
    original = module.parametrizations.weight.original
    with torch.no_grad():
        original.add_(1.0)  # hidden entries under the mask become non-zero
    before = original.clone()
    saved = model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(original, before)
    assert torch.equal(saved, module.weight.detach()) and not saved[~mask_of(module)].any()


def test_a_sharded_checkpoint_resumes_whatever_its_shards_hold(tmp_path):
    """A shard holding only level-0 blocks still gets (all-kept) masks before its weights load."""
    model = tiny_model("llama")
    plan = SparsityPlan(m=4, target=2, levels=[0, 2, 4], criterion="magnitude")
    prune(model, plan, progress=False)
    state = model.state_dict()
    first = {k: v for k, v in state.items() if "layers.0." in k or "embed" in k}
    second = {k: v for k, v in state.items() if k not in first}
    fresh, cb = tiny_model("llama", seed=5), MSPTrainerCallback(sparsity="2:4", when="manual", progress=False)
    Trainer(model=fresh, args=_hf_args(tmp_path), train_dataset=_dataset(), callbacks=[cb])
    for shard in (first, second):  # as transformers' load_sharded_checkpoint does
        fresh.load_state_dict(shard, strict=False)
    assert cb.engine.adopt_installed_masks(fresh).levels == plan.levels
    assert torch.equal(_logits(fresh), _logits(model))


def test_export_records_the_plan_in_its_config_with_removed_blocks(tmp_path):
    from msp_callback.export import save_pruned

    model = tiny_model("llama")
    plan = SparsityPlan(m=4, target=2, levels=[0, 2, 4], criterion="magnitude")
    prune(model, plan, progress=False)
    record = save_pruned(model, tmp_path / "out", plan)
    assert record.removed_blocks == [2]
    recorded, removed = plan_from_config(AutoModelForCausalLM.from_pretrained(tmp_path / "out"))
    assert recorded.levels == plan.levels and removed == [2]
    reloaded, _ = load_pruned(tmp_path / "out")
    assert len(find_blocks(reloaded)) == 2
    assert all(mask_of(m) is not None for b in find_blocks(reloaded) for m in block_linears(b).values())


def test_resuming_at_another_sparsity_is_refused_before_training(tmp_path):
    model, _ = _pruned("llama", "MSPTrainerCallback", tmp_path / "first")  # 2:4
    state = model.state_dict()
    fresh = tiny_model("llama", seed=5)
    cb = MSPTrainerCallback(sparsity="3:4", allocation="uniform", when="fit_end", progress=False)
    trainer_ = Trainer(model=fresh, args=_hf_args(tmp_path / "hf", max_steps=2, save_strategy="no"),
                       train_dataset=_dataset(), callbacks=[cb])
    fresh.load_state_dict(state)  # as resume_from_checkpoint does: masks from the zeros, at 2:4
    with pytest.raises(PlanError, match="do not match sparsity 3:4"):
        trainer_.train()
    assert trainer_.state.global_step == 0  # refused at the start, not after training

    lit, cb = LitLM(), MSPCallback(sparsity="2:4", allocation="uniform", when="fit_start", progress=False)
    t = trainer(cb, steps=1)
    t.fit(lit, loader())
    t.save_checkpoint(tmp_path / "pruned.ckpt")
    other = MSPCallback(sparsity="3:4", allocation="uniform", when="fit_start", progress=False)
    with pytest.raises(PlanError, match="pruned to 2:4 .* asks for sparsity '3:4'"):
        trainer(other, steps=2).fit(LitLM(tiny_model("llama", seed=5)), loader(), ckpt_path=str(tmp_path / "pruned.ckpt"))
