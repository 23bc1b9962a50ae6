"""2:4 semi-structured rules (CPU), portable packing, and the CUDA conversion where a GPU exists."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from msp_callback.models import fingerprint
from msp_callback.nm import NMPatternError, nm_mask
from msp_callback.plan import SparsityPlan
from msp_callback.pruner import prune
from msp_callback.semistructured import (
    SemiStructuredError,
    pack_2of4,
    save_packed_2of4,
    semi_structured_report,
    summarize,
    to_semi_structured,
    unpack_2of4,
    verdict,
)

from .conftest import tiny_model, token_batches


def linear_at(level: int, m: int, out_features: int = 64, in_features: int = 128, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        layer.weight.mul_(nm_mask(torch.randn(out_features, in_features), level, m))
    return layer


@pytest.mark.parametrize("level,m,fits", [(2, 4, True), (3, 4, True), (1, 4, False), (0, 4, False),
                                          (6, 8, True), (7, 8, True), (4, 8, False), (12, 16, False), (14, 16, True)])
def test_which_levels_fit_two_of_four(level, m, fits):
    result = verdict("x", linear_at(level, m))
    assert result.fits is fits, result.reason
    if not fits:
        assert "silently drop" in result.reason


def test_all_zero_layers_are_skipped_not_converted_into_zero_products():
    """A block at level M (4:4) would become an all-zero sparse product: skipped, pointing to export."""
    result = verdict("x", linear_at(4, 4))
    assert not result.fits and "all weights are zero" in result.reason and "save_pruned" in result.reason
    assert verdict("x", linear_at(4, 4), dtype=None).fits  # the portable packed form holds it


def test_conversion_falls_back_to_cutlass_where_torch_has_no_cusparselt(monkeypatch):
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    from msp_callback import semistructured

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for available, kernel in ((True, SparseSemiStructuredTensorCUSPARSELT), (False, SparseSemiStructuredTensorCUTLASS)):
        monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda a=available: a)
        assert semistructured._kernel_class() is kernel
    assert "is not a multiple of (32, 64)" in verdict("odd rows", linear_at(2, 4, out_features=40)).reason  # CUTLASS's


def test_conversion_checks_every_parameter_s_device(monkeypatch):
    """Only the first parameter's device was checked: a model with its embeddings on the GPU and
    the rest on the CPU got as far as the conversion (a fake CUDA tensor stands in for the GPU)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = tiny_model("llama").half()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.model.embed_tokens.weight = nn.Parameter(torch.empty(model.model.embed_tokens.weight.shape,
                                                                   dtype=torch.float16, device="cuda:0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(SemiStructuredError, match=r"model.layers.0.self_attn.q_proj.weight is on cpu: .*model.cuda\(\)"):
        to_semi_structured(model)


def _convert_on_cpu(model) -> int:
    """What to_semi_structured does on a GPU, with CPU CUTLASS tensors (torch packs those in Python)."""
    from torch.nn.utils import parametrize
    from torch.sparse import SparseSemiStructuredTensorCUTLASS
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    from msp_callback.models import named_block_linears
    from msp_callback.nm import mask_of
    from msp_callback.semistructured import install_semi_structured

    count = 0
    for v in semi_structured_report(model, torch.float16):
        if v.fits:
            module = named_block_linears(model)[v.name]
            if mask_of(module) is not None:
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            weight = module.weight.detach().contiguous()
            packed, meta = sparse_semi_structured_from_dense_cutlass(weight)
            install_semi_structured(module, SparseSemiStructuredTensorCUTLASS(
                weight.shape, packed=packed, meta=meta, packed_t=None, meta_t=None, compressed_swizzled_bitmask=None))
            count += 1
    return count


@pytest.mark.filterwarnings("ignore:The PyTorch API of SparseSemiStructuredTensor")
def test_a_converted_model_measures_reports_saves_and_refuses_moves_clearly(tmp_path):
    from transformers import AutoModelForCausalLM

    from msp_callback.models import measure_sparsity, named_block_linears
    from msp_callback.semistructured import from_semi_structured

    model = tiny_model("llama")
    prune(model, SparsityPlan(m=4, target=3, levels=[2, 3, 4], criterion="magnitude"), None, progress=False)
    model = model.half()
    dense = {name: module.weight.detach().clone() for name, module in named_block_linears(model).items()}
    sparsity = measure_sparsity(model).pruned_linears
    assert _convert_on_cpu(model) == 14  # blocks 0 and 1; block 2 (4:4) is skipped
    assert measure_sparsity(model).pruned_linears == pytest.approx(sparsity)
    assert sum("converted" in v.reason for v in semi_structured_report(model)) == 14
    model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float16)
    for name, module in named_block_linears(reloaded).items():
        assert torch.equal(module.weight, dense[name]), name
    with pytest.raises(SemiStructuredError, match="cannot move from cpu torch.float16 to cpu torch.float32.*from_semi_structured"):
        model.to(torch.float32)
    model.to("cpu")  # a move that changes nothing passes
    assert from_semi_structured(model) == 14
    model.float()
    for name, module in named_block_linears(model).items():
        assert torch.equal(module.weight.half(), dense[name]), name


def test_group_by_group_for_other_m():
    """4:8 fits only if every aligned half of each group of 8 keeps at most 2."""
    layer = nn.Linear(8, 32, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 1.0, 0, 0, 0, 0, 1.0, 1.0]).repeat(32, 1))
        assert verdict("balanced", layer).fits is False  # width 8 < the kernel's 64 columns
        layer = nn.Linear(128, 32, bias=False)
        layer.weight.copy_(torch.tensor([1.0, 1.0, 0, 0, 0, 0, 1.0, 1.0]).repeat(32, 16))
        assert verdict("balanced", layer).fits is True
        layer.weight.copy_(torch.tensor([1.0, 1.0, 1.0, 0, 0, 0, 0, 1.0]).repeat(32, 16))
        assert "keeps 3 weights" in verdict("unbalanced", layer).reason


def test_layout_dtype_and_shape_rules():
    layer = linear_at(2, 4, out_features=40, in_features=128)
    assert "is not a multiple of (16, 16)" in verdict("odd rows", layer).reason  # cuSPARSELt, float16, where CUDA torch has it
    assert verdict("odd rows", layer, dtype=None).fits  # the portable form has no kernel rules
    assert "kernel (use float16 or bfloat16)" in verdict("f32", linear_at(2, 4), torch.float32).reason
    gpt2 = tiny_model("gpt2")
    prune(gpt2, SparsityPlan.uniform(2, 4, 3, criterion="magnitude"), None, progress=False)
    reasons = {v.reason for v in semi_structured_report(gpt2)}
    assert any("Conv1D" in r for r in reasons)


def test_report_on_a_mixed_plan():
    model = tiny_model("llama")
    plan = SparsityPlan(m=4, target=2, levels=[1, 3, 2], criterion="magnitude", fingerprint=fingerprint(model))
    prune(model, plan, None, progress=False)
    verdicts = semi_structured_report(model)
    fits = {v.name.split(".")[1] for v in verdicts if v.fits}
    assert fits <= {"1", "2"} and not any(v.fits for v in verdicts if v.name.startswith("blocks.0."))
    assert "of 21 block linears fit 2:4" in summarize(verdicts)


def test_pack_round_trip_and_refusal_to_truncate():
    weight = linear_at(3, 4).weight.detach()
    values, indices = pack_2of4(weight)
    assert values.shape == (64, 64) and indices.dtype == torch.uint8 and int(indices.max()) <= 3
    assert torch.equal(unpack_2of4(values, indices), weight)
    three_kept = linear_at(1, 4).weight.detach()
    with pytest.raises(NMPatternError, match="expected at least 2 of 4"):
        pack_2of4(three_kept)


def test_save_packed_file(tmp_path):
    model = tiny_model("llama")
    plan = SparsityPlan(m=4, target=2, levels=[1, 3, 2], criterion="magnitude")
    prune(model, plan, token_batches(1), progress=False)
    verdicts = save_packed_2of4(model, tmp_path / "packed.safetensors")
    tensors = load_file(tmp_path / "packed.safetensors")
    assert len(tensors) == 2 * sum(v.fits for v in verdicts) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["packed.safetensors"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_conversion_without_cuda_says_so():
    with pytest.raises(SemiStructuredError, match="need CUDA"):
        to_semi_structured(tiny_model("llama"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (sm80+)")
def test_cuda_conversion_matches_dense():
    model = tiny_model("llama")
    plan = SparsityPlan(m=4, target=2, levels=[2, 3, 1], criterion="magnitude")
    prune(model, plan, None, progress=False)
    model = model.cuda().half()
    x = token_batches(1, 64)[0].cuda()
    with torch.no_grad():
        reference = model(x).logits.float()
        verdicts = to_semi_structured(model)
        assert sum(v.fits for v in verdicts) >= 14
        torch.testing.assert_close(model(x).logits.float(), reference, rtol=1e-2, atol=1e-2)
