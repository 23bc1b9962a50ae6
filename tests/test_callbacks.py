"""The Lightning and Hugging Face callbacks on a tiny model with real trainers."""

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import Trainer

from msp_callback import MSPCallback, MSPTrainerCallback
from msp_callback.block_walk import CalibrationError
from msp_callback.models import ModelStructureError, block_linears, find_blocks
from msp_callback.nm import NMPatternError, check_pattern, mask_of, to_out_in
from msp_callback.plan import PlanError

from .conftest import VOCAB, tiny_model


class LitLM(pl.LightningModule):
    def __init__(self, model=None):
        super().__init__()
        self.model = (model if model is not None else tiny_model("llama")).train()

    def training_step(self, batch, batch_idx):
        ids = batch[0]
        return self.model(input_ids=ids, labels=ids).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)


def loader(rows=16, seqlen=16, seed=0):
    ids = torch.randint(0, VOCAB, (rows, seqlen), generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(ids), batch_size=4)


def trainer(callback, steps=3, **kwargs):
    return pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], **kwargs)


def assert_plan_exact(model, plan):
    for i, block in enumerate(find_blocks(model)):
        for name, module in block_linears(block).items():
            assert mask_of(module) is not None, name
            check_pattern(to_out_in(module, module.weight), plan.linear_levels(i, [name])[name], plan.m, name)


FAST = dict(calib_samples=4, fitness_samples=4, population=4, generations=1, progress=False)


def test_lightning_prunes_at_fit_end_and_stays_sparse_through_more_training():
    lit, cb = LitLM(), MSPCallback(sparsity="2:4", allocation="msp", **FAST)
    trainer(cb).fit(lit, loader())
    assert cb.plan is not None and sum(cb.plan.levels) == 6
    assert_plan_exact(lit.model, cb.plan)
    before = find_blocks(lit.model)[0].self_attn.q_proj.parametrizations.weight.original.clone()
    trainer(cb, steps=6).fit(lit, loader(seed=1))  # a later fit: no second pruning, masks kept
    assert_plan_exact(lit.model, cb.plan)
    assert not torch.equal(before, find_blocks(lit.model)[0].self_attn.q_proj.parametrizations.weight.original)


def test_lightning_fit_end_prunes_before_the_strategy_tears_down():
    """Lightning's strategy teardown moves the model to the CPU and unwraps DDP before on_fit_end:
    the end-of-fit prune must run before it, with the model still on its device."""
    lit, cb = LitLM(), MSPCallback(sparsity="2:4", allocation="uniform", calib_samples=4, progress=False)
    t = trainer(cb)
    events = []
    teardown, compress = t.strategy.teardown, cb.engine.compress
    t.strategy.teardown = lambda: (events.append("teardown"), teardown())[1]
    cb.engine.compress = lambda *a, **k: (events.append("compress"), compress(*a, **k))[1]
    t.fit(lit, loader())
    assert events == ["compress", "teardown"]
    assert_plan_exact(lit.model, cb.plan)


def test_lightning_prunes_at_fit_start_then_trains_sparse():
    lit, cb = LitLM(), MSPCallback(sparsity="3:4", allocation="uniform", when="fit_start", progress=False)
    trainer(cb, gradient_clip_val=1.0).fit(lit, loader())
    assert cb.plan.levels == [3, 3, 3]
    assert_plan_exact(lit.model, cb.plan)


def test_lightning_checkpoint_keeps_plan_and_masks(tmp_path):
    lit, cb = LitLM(), MSPCallback(sparsity="2:4", allocation="owl", calib_samples=4, progress=False)
    t = trainer(cb)
    t.fit(lit, loader())
    path = tmp_path / "pruned.ckpt"
    t.save_checkpoint(path)

    lit2, cb2 = LitLM(tiny_model("llama", seed=5)), MSPCallback(sparsity="2:4", allocation="owl", progress=False)
    trainer(cb2, steps=5).fit(lit2, loader(seed=2), ckpt_path=str(path))
    assert cb2.plan is not None and cb2.plan.levels == cb.plan.levels
    assert_plan_exact(lit2.model, cb2.plan)
    for name, module in lit2.model.named_modules():
        if mask_of(module) is not None:
            original = dict(lit.model.named_modules())[name]
            assert torch.equal(mask_of(module), mask_of(original)), name


def test_lightning_per_group_plan_survives_a_checkpoint(tmp_path):
    settings = dict(FAST, sparsity="2:4", allocation="msp", search="level-switch", granularity="attn_mlp",
                    generations=2)
    lit, cb = LitLM(), MSPCallback(**settings)
    t = trainer(cb)
    t.fit(lit, loader())
    assert cb.plan.granularity == "attn_mlp" and len(cb.plan.levels) == 6
    assert_plan_exact(lit.model, cb.plan)
    t.save_checkpoint(tmp_path / "pruned.ckpt")
    lit2, cb2 = LitLM(tiny_model("llama", seed=5)), MSPCallback(**settings)
    trainer(cb2, steps=5).fit(lit2, loader(seed=2), ckpt_path=str(tmp_path / "pruned.ckpt"))
    assert cb2.plan.levels == cb.plan.levels and cb2.plan.unit_weights == cb.plan.unit_weights  # read from the masks
    assert_plan_exact(lit2.model, cb2.plan)


def test_lightning_on_demand(tmp_path):
    lit, cb = LitLM(), MSPCallback(sparsity="2:4", allocation="uniform", criterion="magnitude", when="manual", progress=False)
    t = trainer(cb, steps=1)
    t.fit(lit, loader())
    assert cb.plan is None
    plan = cb.compress(t, lit)
    assert_plan_exact(lit.model, plan)


def test_bad_setups_fail_clearly():
    with pytest.raises(PlanError, match="must lie in 0..4"):
        MSPCallback(sparsity="5:4")

    class NoBlocks(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 4)

        def training_step(self, batch, i):
            return self.net(batch[0].float()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ModelStructureError, match="found no decoder blocks"):
        trainer(MSPCallback(progress=False)).fit(NoBlocks(), loader())
    with pytest.raises(NMPatternError, match="not divisible by M=3"):
        trainer(MSPCallback(sparsity="1:3", progress=False)).fit(LitLM(), loader())
    empty = DataLoader(TensorDataset(torch.zeros(0, 16, dtype=torch.long)), batch_size=4)
    cb = MSPCallback(allocation="uniform", when="manual", calibration=empty, progress=False)
    with pytest.raises(CalibrationError, match="no batches"):
        cb.engine.compress(tiny_model("llama"), empty)


def _hf_trainer(model, callback, tmp_path, steps=2):
    from transformers import Trainer, TrainingArguments

    ids = torch.randint(0, VOCAB, (16, 16), generator=torch.Generator().manual_seed(0))
    dataset = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=1e-2)
    return Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])


@pytest.mark.parametrize("when", ["fit_end", "fit_start"])
def test_hf_trainer_callback(tmp_path, when):
    model = tiny_model("llama")
    cb = MSPTrainerCallback(sparsity="2:4", allocation="msp", when=when, **FAST)
    _hf_trainer(model, cb, tmp_path).train()
    assert cb.plan is not None and sum(cb.plan.levels) == 6
    assert_plan_exact(model, cb.plan)


def _compress_in(framework: str, settings: dict, tmp_path):
    """(model, callback) after a short fit with the callback pruning at its end, in Lightning or the HF Trainer."""
    if framework == "lightning":
        lit, cb = LitLM(), MSPCallback(**settings)
        trainer(cb).fit(lit, loader())
        return lit.model, cb
    model, cb = tiny_model("llama"), MSPTrainerCallback(**settings)
    _hf_trainer(model, cb, tmp_path).train()
    return model, cb


def _assert_pruned_weights_zero(model):
    for block in find_blocks(model):
        for module in block_linears(block).values():
            assert bool((module.weight[~mask_of(module)] == 0).all())


@pytest.mark.parametrize("framework", ["lightning", "hf"])
def test_callbacks_run_the_recovery_stage_after_pruning_with_masks_held(tmp_path, framework):
    settings = dict(sparsity="2:4", allocation="uniform", calib_samples=4, fitness_samples=0, recover_steps=3,
                    recover_batch_size=2, recover_lr=1e-3, progress=False)
    model, cb = _compress_in(framework, settings, tmp_path)
    recovery = cb.plan.metadata["recovery"]
    assert recovery["steps"] == 3 and recovery["first_loss"] > 0
    assert_plan_exact(model, cb.plan)
    _assert_pruned_weights_zero(model)


def test_split_rows_cuts_inside_a_batch():
    from msp_callback.integrations.engine import split_rows

    batches = [torch.arange(6).reshape(3, 2), torch.arange(4).reshape(2, 2)]
    head, tail = split_rows(batches, 4)
    assert torch.equal(torch.cat(head), torch.cat(batches)[:4]) and torch.equal(torch.cat(tail), torch.cat(batches)[4:])
    assert split_rows(batches, 9)[1] == []


def test_sharded_strategies_are_refused_with_the_supported_list():
    from msp_callback.integrations.callback_base import check_strategy

    check_strategy("DDPStrategy")
    check_strategy("SingleDeviceStrategy")
    for name in ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"):
        with pytest.raises(RuntimeError, match="Supported: a single device, or data parallel"):
            check_strategy(name)


def test_hf_callback_checks_the_model_at_init(tmp_path):
    with pytest.raises(NMPatternError, match="not divisible by M=3"):
        _hf_trainer(tiny_model("llama"), MSPTrainerCallback(sparsity="1:3", progress=False), tmp_path)


@pytest.mark.parametrize("arch", ["gpt2", "opt"])
def test_lightning_resume_with_biased_linears(tmp_path, arch):
    """Parametrizing a linear with a bias reorders its parameters (bias, then weight.original): the
    optimizer state saved after pruning must still fit the resumed model."""
    lit, cb = LitLM(tiny_model(arch)), MSPCallback(sparsity="2:4", allocation="uniform", criterion="magnitude",
                                                   when="fit_start", progress=False)
    t = trainer(cb)
    t.fit(lit, loader())
    path = tmp_path / "pruned.ckpt"
    t.save_checkpoint(path)

    lit2 = LitLM(tiny_model(arch, seed=5))
    cb2 = MSPCallback(sparsity="2:4", allocation="uniform", criterion="magnitude", when="fit_start", progress=False)
    trainer(cb2, steps=6).fit(lit2, loader(seed=2), ckpt_path=str(path))
    assert_plan_exact(lit2.model, cb2.plan)
    for name, module in lit2.model.named_modules():
        if mask_of(module) is not None:
            assert torch.equal(mask_of(module), mask_of(dict(lit.model.named_modules())[name])), name


class SingleGroupTrainer(Trainer):
    """A Trainer whose own create_optimizer puts every parameter in one group, in model order."""

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        return self.optimizer


@pytest.mark.parametrize("arch,optimizer", [("llama", "default"), ("gpt2", "default"), ("gpt2", "single group"),
                                            ("gpt2", "given")])
def test_hf_trainer_checkpoint_resume_keeps_plan_and_masks(tmp_path, arch, optimizer):
    """Resume after pruning; with biased linears the optimizer's saved order must fit the resumed
    one whether the Trainer builds it (default groups, or one group) or the user hands it in."""
    from transformers import TrainingArguments

    ids = torch.randint(0, VOCAB, (16, 16), generator=torch.Generator().manual_seed(0))
    dataset = [{"input_ids": row, "labels": row} for row in ids]

    def run(model, callback, steps, resume=None):
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4,
                                 report_to=[], save_strategy="steps", save_steps=2, use_cpu=True, disable_tqdm=True,
                                 learning_rate=1e-2)
        kinds = {"default": (Trainer, {}), "single group": (SingleGroupTrainer, {}),
                 "given": (Trainer, {"optimizers": (torch.optim.AdamW(model.parameters(), lr=1e-2), None)})}
        cls, extra = kinds[optimizer]
        cls(model=model, args=args, train_dataset=dataset, callbacks=[callback], **extra).train(resume_from_checkpoint=resume)

    model, cb = tiny_model(arch), MSPTrainerCallback(sparsity="2:4", allocation="msp", when="fit_start", **FAST)
    run(model, cb, steps=2)
    assert (tmp_path / "checkpoint-2").exists()

    fresh = tiny_model(arch, seed=5)
    cb2 = MSPTrainerCallback(sparsity="2:4", allocation="msp", when="fit_start", **{**FAST, "generations": 3})
    run(fresh, cb2, steps=4, resume=str(tmp_path / "checkpoint-2"))
    assert cb2.plan is not None and cb2.plan.levels == cb.plan.levels
    assert_plan_exact(fresh, cb2.plan)
    for name, module in fresh.named_modules():
        if mask_of(module) is not None:
            assert torch.equal(mask_of(module), mask_of(dict(model.named_modules())[name])), name


def test_an_already_masked_model_is_not_pruned_again():
    lit = LitLM()
    first = MSPCallback(sparsity="2:4", allocation="msp", when="manual", **FAST)
    t = trainer(first, steps=1)
    t.fit(lit, loader())
    plan = first.compress(t, lit)
    again = MSPCallback(sparsity="2:4", allocation="msp", when="fit_start", **FAST)
    trainer(again).fit(lit, loader(seed=3))
    assert again.plan.levels == plan.levels and again.plan.metadata["source"] == "masks already installed"
    assert_plan_exact(lit.model, plan)


@pytest.mark.parametrize("framework", ["lightning", "hf"])
def test_callbacks_reconstruct_blocks_while_pruning_with_masks_held(tmp_path, framework):
    settings = dict(sparsity="2:4", allocation="uniform", calib_samples=4, fitness_samples=0, reconstruct_epochs=2,
                    reconstruct_holdout=2, reconstruct_lr=0.05, progress=False)
    model, cb = _compress_in(framework, settings, tmp_path)
    reports = cb.plan.metadata["reconstruction"]
    assert [r["block"] for r in reports] == [0, 1, 2]
    assert all(r["holdout_before"] is not None for r in reports)  # rows after the calibration ones held out
    assert_plan_exact(model, cb.plan)
    _assert_pruned_weights_zero(model)
