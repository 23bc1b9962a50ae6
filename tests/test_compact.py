"""Compact N:M checkpoints: packing against brute force, exact round trips, damaged files refused."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from msp_callback.compact import PackedShape, pack, unpack
from msp_callback.export import COMPACT_FILE, ExportError, load_pruned, save_pruned, weight_bytes
from msp_callback.models import block_linears, find_blocks
from msp_callback.nm import NMPatternError, mask_of

from .test_export import X, pruned


def _random_keep(rows: int, groups: int, m: int, level: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    order = torch.rand(rows, groups, m, generator=gen).argsort(-1)
    return (order >= level).reshape(rows, groups * m)  # exactly M - level kept per group, random places


@settings(max_examples=40, deadline=None)
@given(m=st.sampled_from([2, 4, 8, 16]), data=st.data())
def test_pack_unpack_is_exact_with_the_fewest_bits(m, data):
    level = data.draw(st.integers(0, m))
    rows, groups, seed = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 6)), data.draw(st.integers(0, 99))
    keep = _random_keep(rows, groups, m, level, seed)
    weight = torch.randn(rows, groups * m, generator=torch.Generator().manual_seed(seed)) * keep
    weight[0, keep[0].nonzero()[:1, 0]] = 0.0  # a kept weight that is exactly zero stays kept
    values, positions = pack(weight, keep, level, m)
    shape = PackedShape(rows, groups * m, m, level)
    kept = m - level
    assert shape.bits == (math.ceil(math.log2(math.comb(m, kept))) if 0 < kept < m else 0)
    assert values.numel() == rows * groups * kept and positions.numel() == math.ceil(rows * groups * shape.bits / 8)
    back, back_keep = unpack(values, positions, shape)
    assert torch.equal(back, weight) and torch.equal(back_keep, keep)


def test_bits_per_group_at_the_usual_levels():
    assert [PackedShape(1, 4, 4, level).bits for level in range(5)] == [0, 2, 3, 2, 0]
    assert PackedShape(1, 8, 8, 4).bits == 7  # C(8, 4) = 70 subsets


def test_pack_refuses_a_mask_of_another_level_and_unpack_refuses_damage():
    keep = _random_keep(2, 3, 4, 2, 0)
    with pytest.raises(NMPatternError, match="keeps 2 of 4 weights, not 1"):
        pack(torch.randn(2, 12), keep, 3, 4)
    values, positions = pack(torch.randn(2, 12), keep, 2, 4)
    shape = PackedShape(2, 12, 4, 2)
    with pytest.raises(NMPatternError, match="position bytes"):
        unpack(values, positions[:-1], shape)
    with pytest.raises(NMPatternError, match="out of range"):
        unpack(values, torch.full_like(positions, 255), shape)
    with pytest.raises(NMPatternError, match="M up to 16"):
        pack(torch.randn(2, 32), torch.ones(2, 32, dtype=torch.bool), 0, 32)


@pytest.mark.parametrize("arch,drop", [("llama", True), ("llama", False), ("gpt2", True)])
def test_compact_export_reloads_the_same_weights_masks_and_logits(arch, drop, tmp_path):
    model, plan = pruned(arch, levels=(4, 1, 1), criterion="wanda")
    with torch.no_grad():
        reference = model(X).logits
    masks = {i: {n: (mask_of(m).clone(), m.weight.detach().clone()) for n, m in block_linears(b).items()}
             for i, b in enumerate(find_blocks(model))}
    record = save_pruned(model, tmp_path / "plain", plan, drop_pruned_blocks=drop)
    compact = save_pruned(model, tmp_path / "compact", plan, drop_pruned_blocks=drop, format="compact")
    assert compact.format == "compact" and (tmp_path / "compact" / COMPACT_FILE).exists()
    assert compact.parameters_after == record.parameters_after and compact.removed_blocks == record.removed_blocks
    assert weight_bytes(tmp_path / "compact") < weight_bytes(tmp_path / "plain")
    loaded, _ = load_pruned(tmp_path / "compact")
    for j, block in enumerate(find_blocks(loaded)):
        for name, module in block_linears(block).items():
            mask, weight = masks[compact.kept_blocks[j]][name]
            assert torch.equal(mask_of(module), mask) and torch.equal(module.weight, weight), (j, name)
    plain, _ = load_pruned(tmp_path / "plain")
    with torch.no_grad():  # bit for bit the plain export's model (which drops identity blocks: 1e-5 off the original)
        assert torch.equal(loaded(X).logits, plain(X).logits)
        torch.testing.assert_close(loaded(X).logits, reference, rtol=0, atol=1e-5)
    unmasked, _ = load_pruned(tmp_path / "compact", masks=False)
    assert mask_of(find_blocks(unmasked)[-1].mlp.down_proj if arch == "llama" else find_blocks(unmasked)[-1].mlp.c_proj) is None


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_compact_file_is_refused_clearly(damage, tmp_path):
    model, plan = pruned("llama", levels=(2, 2, 2))
    save_pruned(model, tmp_path / "c", plan, format="compact")
    path = tmp_path / "c" / COMPACT_FILE
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="is damaged"):
        load_pruned(tmp_path / "c")
    path.unlink()
    with pytest.raises(ExportError, match="is missing"):
        load_pruned(tmp_path / "c")


def test_unknown_export_format_is_refused(tmp_path):
    model, plan = pruned("llama")
    with pytest.raises(ExportError, match="format must be one of plain, compact"):
        save_pruned(model, tmp_path / "x", plan, format="zip")
    assert not (tmp_path / "x").exists()
