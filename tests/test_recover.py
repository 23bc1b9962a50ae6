"""Recovery: masks held, loss goes down, resume gives the same weights, bad input refused."""

import copy

import pytest
import torch

from msp_callback.config import RecoverSettings
from msp_callback.nm import mask_of, masked_modules
from msp_callback.plan import SparsityPlan
from msp_callback.pruner import prune
from msp_callback.recover import RecoveryError, kd_loss, recover, teacher_targets

from .conftest import token_batches


def _pruned(llama, batches):
    plan = SparsityPlan(m=4, target=2, levels=[1, 2, 3], criterion="wanda")
    prune(llama, plan, batches, progress=False)
    return llama


def _pruned_positions_zero(model) -> bool:
    return all(bool((module.weight[~mask_of(module)] == 0).all()) for _, module in masked_modules(model))


@pytest.mark.parametrize("method,lr", [("sparse", 1e-3), ("lora", 3e-3)])
def test_recovery_holds_masks_and_lowers_the_distillation_loss(llama, method, lr):
    batches = token_batches(2, seqlen=16, batch=2)
    with torch.no_grad():
        llama.model.norm.weight.mul_(20)  # a random model predicts almost uniformly: make it peaky
    teacher = teacher_targets(llama, batches, top_k=16, progress=False)
    model = _pruned(llama, batches)
    before = {name: module.weight.detach().clone() for name, module in masked_modules(model)}
    masks = {name: mask_of(module).clone() for name, module in masked_modules(model)}
    settings = RecoverSettings(recover_steps=12, recover_method=method, recover_lr=lr, recover_top_k=16)
    losses = recover(model, batches, settings, teacher, progress=False)
    assert len(losses) == 12 and losses[-1] < 0.5 * losses[0], losses
    assert _pruned_positions_zero(model)
    after = dict(masked_modules(model))
    assert set(after) == set(masks)  # the plain model is back (LoRA merged), masks unchanged
    assert all(torch.equal(mask_of(after[n]), masks[n]) for n in masks)
    assert any(not torch.equal(after[n].weight, before[n]) for n in before)
    assert not any("lora" in name for name, _ in model.named_modules())
    assert all(p.requires_grad for p in model.parameters())  # as before recovery


def test_plain_language_model_loss_needs_no_teacher(llama):
    batches = token_batches(2, seqlen=16, batch=2)
    model = _pruned(llama, batches)
    losses = recover(model, batches, RecoverSettings(recover_steps=8, recover_loss="lm", recover_lr=3e-3), progress=False)
    assert losses[-1] < losses[0] and _pruned_positions_zero(model)


@pytest.mark.parametrize("method", ["sparse", "lora"])
def test_interrupted_and_resumed_recovery_ends_with_the_same_weights(llama, method, tmp_path):
    batches = token_batches(3, seqlen=16, batch=2)
    teacher = teacher_targets(llama, batches, top_k=8, progress=False)
    pruned = _pruned(llama, batches)
    fresh = copy.deepcopy(pruned)
    interrupted = copy.deepcopy(pruned)
    settings = RecoverSettings(recover_steps=6, recover_method=method, recover_lr=1e-2, recover_top_k=8,
                               recover_save_every=2)
    whole = recover(pruned, batches, settings, teacher, progress=False)

    checkpoint = tmp_path / "recovery.pt"
    settings.recover_checkpoint = str(checkpoint)

    def stop_at_three(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recover(interrupted, batches, settings, teacher, progress=False, on_step=stop_at_three)
    assert checkpoint.exists()
    resumed = recover(fresh, batches, settings, teacher, progress=False)  # a new process: the pruned model again
    assert resumed == whole
    for (name, a), (_, b) in zip(pruned.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), name


def test_recovery_refuses_what_cannot_work(llama, tmp_path):
    batches = token_batches(2)
    settings = RecoverSettings(recover_steps=2)
    with pytest.raises(RecoveryError, match="carries no N:M masks: prune it first"):
        recover(llama, batches, settings, None, progress=False)
    model = _pruned(llama, batches)
    with pytest.raises(RecoveryError, match="needs the dense model's targets"):
        recover(model, batches, settings, None, progress=False)
    with pytest.raises(RecoveryError, match="no recovery batches"):
        recover(model, [], settings, None, progress=False)
    teacher = teacher_targets(model, batches[:1], top_k=4, progress=False)
    with pytest.raises(RecoveryError, match="teacher targets for 1 batches, but 2"):
        recover(model, batches, settings, teacher, progress=False)
    other = tmp_path / "other.pt"
    torch.save({"something": 1}, other)
    settings.recover_checkpoint = str(other)
    settings.recover_loss = "lm"
    with pytest.raises(RecoveryError, match="is not a recovery checkpoint"):
        recover(model, batches, settings, None, progress=False)


def test_distillation_loss_is_the_full_kl_when_k_covers_the_vocabulary_and_never_negative():
    torch.manual_seed(0)
    student = torch.randn(2, 3, 10)
    teacher = torch.randn(2, 3, 10).log_softmax(-1)
    full = (teacher.exp() * (teacher - student.log_softmax(-1))).sum(-1).mean()
    values, tokens = teacher.topk(10, -1)
    assert torch.allclose(kd_loss(student, values, tokens), full, atol=1e-6)
    values, tokens = teacher.topk(3, -1)
    assert 0 <= kd_loss(student, values, tokens) <= full + 1e-6  # coarsening never raises a KL
    peaked = torch.full((1, 1, 10), -30.0).scatter(-1, tokens[:1, :1], 10.0)  # student piles onto the top 3
    assert kd_loss(peaked, values[:1, :1], tokens[:1, :1]) > 0


def test_a_time_limit_stops_recovery_early_and_still_merges_lora(llama):
    batches = token_batches(2, seqlen=16, batch=2)
    model = _pruned(llama, batches)
    settings = RecoverSettings(recover_steps=50, recover_method="lora", recover_loss="lm", recover_max_minutes=1e-9)
    losses = recover(model, batches, settings, progress=False)
    assert len(losses) == 1
    assert not any("lora" in name for name, _ in model.named_modules()) and _pruned_positions_zero(model)


def test_bf16_weights_train_through_float32_masters_under_autocast(llama, monkeypatch):
    """The GPU default dtype: bf16 weights train as float32 masters, the forward autocast to bf16,
    and are rounded back after; the masks still hold. float16 is refused."""
    batches = token_batches(2, seqlen=16, batch=2)
    model = _pruned(llama, batches).to(torch.bfloat16)
    before = {name: module.weight.detach().clone() for name, module in masked_modules(model)}
    seen = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, *a, **k: (seen.append(
        (torch.is_autocast_enabled("cpu"), self.model.layers[0].mlp.down_proj.parametrizations.weight.original.dtype)),
        forward(self, *a, **k))[1])
    losses = recover(model, batches, RecoverSettings(recover_steps=3, recover_loss="lm", recover_lr=1e-2), progress=False)
    assert len(losses) == 3 and seen == [(True, torch.float32)] * 3
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert _pruned_positions_zero(model)
    assert any(not torch.equal(module.weight, before[name]) for name, module in masked_modules(model))
    with pytest.raises(RecoveryError, match="float16"):
        recover(model.half(), batches, RecoverSettings(recover_steps=2, recover_loss="lm"), progress=False)


def test_a_checkpoint_of_other_settings_is_refused_and_the_model_left_as_it_was(llama, tmp_path):
    batches = token_batches(2, seqlen=16, batch=2)
    model = _pruned(llama, batches)
    checkpoint = str(tmp_path / "r.pt")
    recover(model, batches, RecoverSettings(recover_steps=2, recover_loss="lm", recover_checkpoint=checkpoint),
            progress=False)
    with pytest.raises(RecoveryError, match="other recovery settings .*recover_lr"):
        recover(model, batches, RecoverSettings(recover_steps=4, recover_loss="lm", recover_lr=1e-3,
                                                recover_checkpoint=checkpoint), progress=False)
    with pytest.raises(RecoveryError, match="other recovery settings .*recover_method"):
        recover(model, batches, RecoverSettings(recover_steps=4, recover_loss="lm", recover_method="lora",
                                                recover_checkpoint=checkpoint), progress=False)
    assert not any("lora" in name for name, _ in model.named_modules())  # the adapters went with the error
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(RecoveryError, match=r"beyond recover_steps \(--recover-steps\) 1"):
        recover(model, batches, RecoverSettings(recover_steps=1, recover_loss="lm", recover_checkpoint=checkpoint),
                progress=False)
    with pytest.raises(RecoveryError, match="more than the vocabulary"):
        teacher_targets(model, batches, top_k=1000, progress=False)
