"""Block-wise reconstruction: masks held, weights trained toward the dense block, resumable."""

import pytest
import torch

from msp_callback import offload as offload_module
from msp_callback.config import ConfigError, MSPConfig, ReconstructSettings
from msp_callback.models import find_blocks, named_block_linears
from msp_callback.nm import check_pattern, mask_of, stored_weight
from msp_callback.offload import offload_to_disk
from msp_callback.plan import SparsityPlan
from msp_callback.pruner import prune
from msp_callback.reconstruct import ReconstructionError, channel_scale, learning_rates, reconstruct, relative_error

from .conftest import tiny_model, token_batches

SETTINGS = dict(reconstruct_epochs=3, reconstruct_lr=0.05,  # relative: about 1e-3 on weights of scale 0.02
                reconstruct_batch_size=2, reconstruct_holdout=0)


def _run(model, plan, holdout=(), **overrides):
    settings = ReconstructSettings(**{**SETTINGS, **overrides})
    calib = token_batches(2, 16, batch=4)
    return reconstruct(model, plan, calib, settings, holdout=holdout, progress=False)


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: module.weight.detach().clone() for name, module in named_block_linears(model).items()}


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_pruned_weights_stay_exactly_zero_and_kept_weights_train(criterion):
    plan = SparsityPlan(m=4, target=2, levels=[1, 3, 2], criterion=criterion)
    pruned = tiny_model("llama")
    prune(pruned, plan, token_batches(2, 16, batch=4), progress=False)
    model = tiny_model("llama")
    reports = _run(model, plan)
    assert [r.block for r in reports] == [0, 1, 2]
    for name, module in named_block_linears(model).items():
        mask = mask_of(module)
        level = plan.levels[int(name.split(".")[1])]
        check_pattern(mask.float(), level, 4, name, exact=True)  # the plan's level in every group
        assert not bool(module.weight[~mask].any()), name  # pruned: exactly zero
        assert not bool(stored_weight(module)[~mask].any()), name  # in the trained tensor too, not only masked
        if name.startswith("blocks.0."):  # same inputs as plain pruning: the criterion's masks
            assert torch.equal(mask, mask_of(named_block_linears(pruned)[name])), name
    changed = [name for name, w in _weights(model).items() if not torch.equal(w, _weights(pruned)[name])]
    assert len(changed) == len(_weights(model))  # every linear's kept weights moved
    assert sum(r.train_after for r in reports) < sum(r.train_before for r in reports)


def test_level_zero_linears_train_whole_and_fully_pruned_blocks_are_skipped():
    plan = SparsityPlan(m=4, target=2, levels=[2, 0, 4], criterion="wanda")
    dense = _weights(tiny_model("llama"))
    model = tiny_model("llama")
    reports = _run(model, plan)  # block 1's inputs differ from the dense model's after block 0 is pruned
    block1 = {n: w for n, w in _weights(model).items() if n.startswith("blocks.1.")}
    assert all(float((w != dense[n]).float().mean()) > 0.99 for n, w in block1.items())  # level-0 linears train whole
    assert reports[2].epochs == 0 and all(not bool(w.any()) for n, w in _weights(model).items()
                                          if n.startswith("blocks.2."))


@pytest.mark.parametrize("target,schedule,loss,step", [
    ("dense", "constant", "token", "relative"), ("pruned", "constant", "token", "relative"),
    ("dense", "cosine", "token", "relative"), ("dense", "constant", "channel", "relative"),
    ("dense", "constant", "channel", "absolute")])
def test_reconstruction_brings_the_output_closer_to_the_dense_model(target, schedule, loss, step):
    plan = SparsityPlan(m=4, target=3, levels=[3, 3, 3], criterion="wanda")
    ids = torch.cat(token_batches(2, 16, batch=4))  # the calibration rows: what the blocks were fitted on
    dense = tiny_model("llama")
    expected = dense(input_ids=ids).logits
    plain = tiny_model("llama")
    prune(plain, plan, token_batches(2, 16, batch=4), progress=False)
    model = tiny_model("llama")
    lr = {"relative": 0.05, "absolute": 1e-3}[step]
    _run(model, plan, reconstruct_target=target, reconstruct_schedule=schedule, reconstruct_loss=loss, reconstruct_epochs=10,
         reconstruct_step=step, reconstruct_lr=lr)
    assert relative_error(model(input_ids=ids).logits, expected) < relative_error(plain(input_ids=ids).logits, expected)


def test_the_channel_loss_weighs_every_channel_alike():
    torch.manual_seed(0)
    target = torch.randn(2, 5, 8)
    target[..., 0] *= 1000  # one huge channel, as in Gemma-3's residual stream
    output = target.clone()
    output[..., 1:] += torch.randn(2, 5, 7)  # the small channels as wrong as they are large
    scale = channel_scale([target[:1], target[1:]])
    assert torch.allclose(scale, target.pow(2).mean(dim=(0, 1)).sqrt())  # each channel's root-mean-square
    by_hand = ((output - target) / scale).pow(2).sum(-1) / (target / scale).pow(2).sum(-1)
    assert torch.allclose(relative_error(output, target, scale=scale), by_hand.mean())
    assert relative_error(output, target) < 1e-4 < 0.5 < relative_error(output, target, scale=scale)


def test_relative_learning_rates_follow_each_tensors_scale():
    big, small, zero = torch.full((4, 4), 2.0), torch.full((8,), -0.5), torch.zeros(3)
    groups = learning_rates([big, small, zero], 0.01)
    assert [g["params"][0] is t for g, t in zip(groups, [big, small, zero])] == [True] * 3
    assert [g["lr"] for g in groups] == pytest.approx([0.02, 0.005, 1e-5])  # root-mean-square, at least 1e-3
    assert learning_rates([big, small], 0.01, "absolute") == [{"params": [big, small], "lr": 0.01}]
    with pytest.raises(ReconstructionError, match="'fast' is unknown"):
        learning_rates([big], 0.01, "fast")


@pytest.mark.parametrize("arch", ["gemma3_mixed", "gpt2", "opt"])
def test_other_architectures_reconstruct(arch):
    plan = SparsityPlan(m=4, target=2, levels=[2, 2, 2], criterion="wanda")
    model = tiny_model(arch)
    reports = _run(model, plan)
    assert all(r.train_after <= r.train_before for r in reports)
    for name, module in named_block_linears(model).items():
        assert not bool(stored_weight(module)[~mask_of(module)].any()), name


def test_held_out_windows_keep_the_best_epoch():
    plan = SparsityPlan(m=4, target=2, levels=[2, 2, 2], criterion="wanda")
    reports = _run(tiny_model("llama"), plan, holdout=token_batches(1, 16, batch=2, seed=9), reconstruct_lr=25.0,
                   reconstruct_epochs=6, reconstruct_patience=1)
    for r in reports:  # a far too high learning rate: held-out loss rises, the pruned weights (epoch 0) are kept
        assert r.holdout_after <= r.holdout_before
        assert r.best_epoch < r.epochs or r.epochs == 0


def test_bfloat16_blocks_train_in_float32_and_stay_bfloat16():
    plan = SparsityPlan(m=4, target=2, levels=[1, 3, 2], criterion="wanda")
    model = tiny_model("llama").to(torch.bfloat16)
    reports = _run(model, plan)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(r.train_after < r.train_before for r in reports)
    for name, module in named_block_linears(model).items():
        assert not bool(stored_weight(module)[~mask_of(module)].any()), name


@pytest.mark.parametrize("always_copy", [False, True])
def test_an_offloaded_model_reconstructs_like_one_in_memory(always_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(offload_module, "MIN_BYTES", 0)
    plan = SparsityPlan(m=4, target=2, levels=[1, 3, 2], criterion="sparsegpt")
    memory = tiny_model("llama")
    _run(memory, plan)
    model = tiny_model("llama")
    offload = offload_to_disk(model, tmp_path, always_copy=always_copy)
    _run(model, plan)
    assert not offload._homes
    for (name, a), (_, b) in zip(named_block_linears(memory).items(), named_block_linears(model).items()):
        assert torch.equal(a.weight, b.weight), name
        assert torch.equal(mask_of(a), mask_of(b)), name
        assert offload.holds(b.parametrizations["weight"].original), name  # trained weights back in the files


def test_an_interrupted_reconstruction_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from msp_callback import reconstruct as module

    plan = SparsityPlan(m=4, target=2, levels=[1, 3, 2], criterion="wanda")
    holdout = token_batches(1, 16, batch=2, seed=9)
    whole = tiny_model("llama")
    _run(whole, plan, holdout=holdout)
    folder = tmp_path / "ckpt"
    model = tiny_model("llama")
    train = module.train_block
    calls = []

    def failing(block, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return train(block, *args, **kwargs)

    monkeypatch.setattr(module, "train_block", failing)
    with pytest.raises(KeyboardInterrupt):
        _run(model, plan, holdout=holdout, reconstruct_checkpoint=str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["block_0000.pt", "block_0001.pt"]
    monkeypatch.setattr(module, "train_block", train)
    resumed = tiny_model("llama")  # a new process: the model loads dense again
    settings = ReconstructSettings(**{**SETTINGS, "reconstruct_checkpoint": str(folder)})
    reports = reconstruct(resumed, plan, token_batches(2, 16, batch=4), settings, holdout=holdout, resume=True,
                          progress=False)
    assert len(reports) == 3
    for name, w in _weights(whole).items():
        assert torch.equal(w, _weights(resumed)[name]), name
    for a, b in zip(find_blocks(whole).parameters(), find_blocks(resumed).parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    plan = SparsityPlan(m=4, target=2, levels=[1, 3, 2], criterion="wanda")
    folder = str(tmp_path / "ckpt")
    _run(tiny_model("llama"), plan, reconstruct_checkpoint=folder)
    with pytest.raises(ReconstructionError, match="reconstruct_lr"):
        settings = ReconstructSettings(**{**SETTINGS, "reconstruct_lr": 0.5, "reconstruct_checkpoint": folder})
        reconstruct(tiny_model("llama"), plan, token_batches(2, 16, batch=4), settings, resume=True, progress=False)


def test_bad_settings_are_refused_up_front():
    with pytest.raises(ConfigError, match="--reconstruct-lr"):
        MSPConfig(reconstruct_lr=-1.0)
    with pytest.raises(ConfigError, match="--reconstruct-target"):
        MSPConfig(reconstruct_target="teacher")
    with pytest.raises(ReconstructionError, match="calibration"):
        reconstruct(tiny_model("llama"), SparsityPlan(m=4, target=2, levels=[2, 2, 2]), [],
                    ReconstructSettings(reconstruct_epochs=1), progress=False)
