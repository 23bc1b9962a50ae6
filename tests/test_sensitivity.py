import copy

import pytest
import torch

from msp_callback.models import block_linears, find_blocks
from msp_callback.nm import install_mask, mask_of, nm_mask, to_out_in
from msp_callback.plots import plot_sensitivity
from msp_callback.sensitivity import SensitivityResult, fisher_traces

from .conftest import tiny_model, token_batches


def brute_force(model, samples: list[torch.Tensor]) -> dict[str, float]:
    """Per sample: zero grads, full backward with default requires_grad, sum squares, average."""
    linears = {
        f"{i}.{name}": m for i, block in enumerate(find_blocks(model)) for name, m in block_linears(block).items()
    }
    sums = dict.fromkeys(linears, 0.0)
    for ids in samples:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        for key, m in linears.items():
            sums[key] += float(m.weight.grad.double().square().sum())
    model.zero_grad(set_to_none=True)
    return {k: v / len(samples) for k, v in sums.items()}


def assert_matches(result: SensitivityResult, expected: dict[str, float], rel: float = 1e-5) -> None:
    assert result.linear_traces.keys() == expected.keys()
    for key, value in expected.items():
        assert result.linear_traces[key] == pytest.approx(value, rel=rel), key
    for i, trace in enumerate(result.block_traces):
        assert trace == pytest.approx(sum(v for k, v in expected.items() if k.startswith(f"{i}.")), rel=rel)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_per_sample_trace_matches_brute_force(arch):
    model = tiny_model(arch)
    batches = token_batches(num=3, seqlen=12, batch=2)  # 6 samples, split into rows
    result = fisher_traces(model, batches, progress=False)
    rows = [row.unsqueeze(0) for b in batches for row in b]
    assert_matches(result, brute_force(model, rows))
    assert (result.num_samples, result.num_micro_batches, result.tokens) == (6, 6, 72)
    assert len(result.block_traces) == 3 and all(t > 0 for t in result.block_traces)


def test_micro_batches_match_brute_force_of_mean_losses():
    model = tiny_model("llama")
    batches = token_batches(num=2, seqlen=12, batch=3)  # 6 rows -> micro-batches cross batch borders
    result = fisher_traces(model, batches, micro_batch_size=2, progress=False)
    assert (result.num_samples, result.num_micro_batches, result.micro_batch_size) == (6, 3, 2)
    assert_matches(result, brute_force(model, list(torch.cat(batches).split(2))))


def test_inference_mode_and_checkpointing_give_the_same_traces():
    model = tiny_model("qwen2")
    batches = token_batches(num=2, seqlen=12)
    reference = fisher_traces(model, batches, progress=False)
    with torch.inference_mode():
        inside = fisher_traces(model, [b.clone() for b in batches], progress=False)
    checkpointed = fisher_traces(model, batches, progress=False, gradient_checkpointing=True)
    for other in (inside, checkpointed):
        assert other.block_traces == pytest.approx(reference.block_traces, rel=1e-6)


def test_bfloat16_model_is_finite_and_close_to_float32():
    model = tiny_model("llama")
    batches = token_batches(num=2, seqlen=12)
    fp32 = fisher_traces(model, batches, progress=False)
    bf16 = fisher_traces(copy.deepcopy(model).to(torch.bfloat16), batches, progress=False)
    assert all(torch.isfinite(torch.tensor(t)) for t in bf16.linear_traces.values())
    assert bf16.block_traces == pytest.approx(fp32.block_traces, rel=0.05)


def test_masked_model_uses_gradient_of_effective_weight():
    model, plain = tiny_model("llama"), tiny_model("llama")
    gen = torch.Generator().manual_seed(1)
    for block, plain_block in zip(find_blocks(model), find_blocks(plain)):
        plain_linears = block_linears(plain_block)
        for name, module in block_linears(block).items():
            scores = torch.rand(to_out_in(module, module.weight).shape, generator=gen)
            install_mask(module, nm_mask(scores, 2, 4))
            with torch.no_grad():  # the same effective weight, without a parametrization
                plain_linears[name].weight.mul_(mask_of(module))
    batches = token_batches(num=3, seqlen=12)
    result = fisher_traces(model, batches, progress=False)
    assert_matches(result, brute_force(plain, batches))
    checkpointed = fisher_traces(model, batches, progress=False, gradient_checkpointing=True)
    assert checkpointed.block_traces == pytest.approx(result.block_traces, rel=1e-6)
    assert all(mask_of(m) is not None for m in block_linears(find_blocks(model)[0]).values())
    assert all(p.grad is None for p in model.parameters())


def _state(model):
    return (
        {name: p.requires_grad for name, p in model.named_parameters()},
        {name: m.training for name, m in model.named_modules()},
    )


def test_model_state_is_restored_also_on_error():
    model = tiny_model("gpt2").train()
    model.transformer.h[1].eval()  # mixed modes
    model.transformer.wte.weight.requires_grad_(False)
    before = _state(model)
    fisher_traces(model, token_batches(num=2, seqlen=8), progress=False)
    assert _state(model) == before
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(IndexError):
        fisher_traces(model, [torch.full((1, 8), 10_000)], progress=False)  # token id out of range
    assert _state(model) == before
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_raise():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="empty"):
        fisher_traces(model, [], progress=False)
    with pytest.raises(ValueError, match="micro_batch_size"):
        fisher_traces(model, token_batches(1), micro_batch_size=0, progress=False)


def test_json_round_trip_and_plot(tmp_path):
    result = fisher_traces(tiny_model("opt"), token_batches(num=2, seqlen=8), progress=False)
    path = result.save(tmp_path / "sensitivity.json")
    assert SensitivityResult.load(path) == result
    assert SensitivityResult.from_dict(result.to_dict()) == result
    png = plot_sensitivity(result, tmp_path / "plots" / "sensitivity.png", title="tiny opt")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert plot_sensitivity([1.0, 0.1, 0.01], tmp_path / "list.png").stat().st_size > 1000


def test_level_and_convergence_plots(tmp_path):
    from msp_callback.plots import plot_convergence, plot_levels

    history = [{"generation": g, "best_fitness": 100.0 / (g + 1), "mean_fitness": 200.0 / (g + 1)} for g in range(4)]
    for path in (plot_levels({"uniform": [3, 3, 3], "msp": [2, 3, 4]}, 4, tmp_path / "l.png"),
                 plot_convergence(history, tmp_path / "c.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_convergence_against_evaluations(tmp_path):
    from msp_callback.plots import plot_convergence

    small = [{"generation": g, "best_fitness": 10.0 - g, "mean_fitness": 12.0 - g, "evaluations": 4} for g in range(3)]
    large = [dict(h, evaluations=20) for h in small]
    path = plot_convergence({"P=4": small, "P=20": large}, tmp_path / "e.png", x="evaluations")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="evaluations"):
        plot_convergence(small, tmp_path / "bad.png", x="seconds")
