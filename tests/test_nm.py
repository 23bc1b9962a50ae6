import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from msp_callback.criteria import get_criterion
from msp_callback.nm import (
    NMPatternError,
    check_pattern,
    from_out_in,
    group_ranks,
    mask_from_zeros,
    nm_mask,
    to_out_in,
    zeros_per_group,
)


def brute_force_mask(scores: torch.Tensor, level: int, m: int) -> torch.Tensor:
    """Per group, in plain Python: prune the `level` smallest (ties: leftmost first)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    rows, cols = scores.shape
    for r in range(rows):
        for g in range(0, cols, m):
            values = scores[r, g : g + m].tolist()
            order = sorted(range(m), key=lambda j: (values[j], j))
            for j in order[:level]:
                keep[r, g + j] = False
    return keep


@pytest.mark.parametrize("m", [4, 8, 16])
def test_every_level_matches_brute_force(m):
    gen = torch.Generator().manual_seed(m)
    scores = torch.randn(12, 4 * m, generator=gen)
    ranks = group_ranks(scores, m)
    for level in range(m + 1):
        keep = nm_mask(scores, level, m)
        assert torch.equal(keep, brute_force_mask(scores, level, m))
        assert torch.equal(zeros_per_group(keep, m), torch.full((12, 4), level))
        assert torch.equal(keep, ranks >= level)


def test_ties_are_deterministic():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, 0.0, 2.0, 0.0]])
    assert torch.equal(nm_mask(scores, 2, 4), brute_force_mask(scores, 2, 4))


@pytest.mark.parametrize("layer_type", ["linear", "conv1d"])
@pytest.mark.parametrize("m", [4, 8, 16])
def test_magnitude_on_linear_and_conv1d(layer_type, m):
    torch.manual_seed(m)
    module = nn.Linear(3 * m, 10) if layer_type == "linear" else Conv1D(10, 3 * m)  # Conv1D(nf=out, nx=in)
    weight = to_out_in(module, module.weight.data)
    assert weight.shape == (10, 3 * m)
    for level in range(m + 1):
        pruned, keep = get_criterion("magnitude").prune_weight(weight.clone(), None, level, m)
        assert torch.equal(keep, brute_force_mask(weight.abs(), level, m))
        check_pattern(pruned, level, m, exact=False)
        assert from_out_in(module, keep).shape == module.weight.shape


def test_two_four_equals_topk():
    torch.manual_seed(1)
    w = torch.randn(32, 64)
    _, keep = get_criterion("magnitude").prune_weight(w, None, 2, 4)
    top = w.abs().reshape(32, 16, 4).topk(2, dim=-1).indices
    expected = torch.zeros(32, 16, 4, dtype=torch.bool).scatter_(-1, top, True).reshape(32, 64)
    assert torch.equal(keep, expected)


def test_check_pattern_names_first_bad_group():
    w = torch.ones(3, 8)
    w[:, :2] = 0
    w[:, 4:6] = 0
    w[2, 5] = 1.0
    with pytest.raises(NMPatternError, match=r"q_proj: row 2, group 1 \(inputs 4\.\.7\) has 1 zeros"):
        check_pattern(w, 2, 4, name="q_proj")


def test_width_not_divisible():
    with pytest.raises(NMPatternError, match="not divisible by M=8"):
        nm_mask(torch.randn(4, 12), 2, 8)


def test_mask_from_zeros_takes_exactly_level_zeros_leftmost_first():
    weight = torch.tensor([[0.0, 1.0, 0.0, 0.0, 2.0, 0.0, 3.0, 4.0]])
    keep = mask_from_zeros(weight, 1, 4)
    assert keep.tolist() == [[False, True, True, True, True, False, True, True]]
    assert mask_from_zeros(weight[:, :4], 3, 4).tolist() == [[False, True, False, False]]
    with pytest.raises(NMPatternError, match="group 1 .* has 1 zeros, expected at least 2"):
        mask_from_zeros(weight, 2, 4)


def test_ranks_take_one_byte_a_weight():
    """The level cache keeps one rank per weight: at most one byte up to M = 256."""
    scores = torch.randn(4, 512)
    assert group_ranks(scores, 4).dtype == torch.uint8 and group_ranks(scores, 256).dtype == torch.uint8
    assert group_ranks(scores, 512).dtype == torch.int16
    expected = scores.reshape(4, 64, 8).argsort(dim=-1, stable=True).argsort(dim=-1, stable=True).reshape(4, 512)
    assert torch.equal(group_ranks(scores, 8).long(), expected)
