"""Compact N:M weights: each pruned linear as its kept values plus which positions they hold.

In a linear at level L of M, every group of M consecutive inputs of an output row keeps K = M - L
weights. Which K is one of C(M, K) subsets; the subset's index (in a fixed table) is stored in
ceil(log2 C(M, K)) bits, packed into bytes: 2 bits a group at 3:4, 3 at 2:4, 7 at 4:8 (an M-bit
mask would take 4 and 8). The kept values are stored as they are, in the
weight's dtype, in position order. The positions are those of the installed N:M mask (or, for a
model without masks, the weight's zeros at its level), so kept weights that happen to be zero
stay kept and the masks come back exactly.

`pack` / `unpack` are the two directions for one weight; `export.save_pruned(..., format="compact")`
writes a whole model with them and `export.load_pruned` reads it back. M up to 16.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from itertools import combinations

import torch
from torch import Tensor

from .nm import NMPatternError, check_divisible

MAX_M = 16


@dataclass(frozen=True)
class PackedShape:
    """What `unpack` needs besides the two tensors: the weight's (out, in), M and its level."""

    out_features: int
    in_features: int
    m: int
    level: int

    @property
    def kept(self) -> int:
        return self.m - self.level

    @property
    def bits(self) -> int:
        return math.ceil(math.log2(math.comb(self.m, self.kept))) if 0 < self.kept < self.m else 0

    @property
    def groups(self) -> int:
        return self.out_features * self.in_features // self.m

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@lru_cache(maxsize=None)
def _subsets(m: int, kept: int) -> tuple[Tensor, Tensor]:
    """(positions (C, kept) of every kept subset in lexicographic order, index of each M-bit code)."""
    subsets = list(combinations(range(m), kept))
    positions = torch.tensor(subsets, dtype=torch.long).reshape(len(subsets), kept)
    codes = (1 << positions).sum(-1)
    index = torch.full((1 << m,), -1, dtype=torch.long)
    index[codes] = torch.arange(len(subsets))
    return positions, index


def check_m(m: int) -> None:
    if not 1 <= m <= MAX_M:
        raise NMPatternError(f"the compact format stores M up to {MAX_M}, got M = {m}: use the plain export")


def pack(weight: Tensor, keep: Tensor, level: int, m: int) -> tuple[Tensor, Tensor]:
    """(values, subset codes) of a weight (out, in) whose ``keep`` mask keeps M - level of every
    group of M; raises `NMPatternError` if a group keeps another count."""
    check_m(m)
    check_divisible(weight.shape[1], m)
    shape = PackedShape(weight.shape[0], weight.shape[1], m, level)
    grouped = keep.reshape(shape.groups, m)
    counts = grouped.sum(-1)
    if bool((counts != shape.kept).any()):
        bad = int((counts != shape.kept).nonzero()[0, 0])
        raise NMPatternError(f"group {bad} keeps {int(counts[bad])} of {m} weights, not {shape.kept} (level {level})")
    positions, index = _subsets(m, shape.kept)
    codes = index[(grouped.long() << torch.arange(m)).sum(-1)]
    kept_positions = positions[codes]
    values = weight.reshape(shape.groups, m).gather(-1, kept_positions).reshape(shape.out_features, -1)
    return values.contiguous(), _to_bits(codes, shape.bits)


def unpack(values: Tensor, packed: Tensor, shape: PackedShape) -> tuple[Tensor, Tensor]:
    """(weight, keep mask), both (out, in), from what `pack` returned; raises `NMPatternError` on
    tensors of the wrong size or subset codes out of range (a damaged file)."""
    check_m(shape.m)
    expected = (shape.out_features, shape.in_features * shape.kept // shape.m)
    if tuple(values.shape) != expected:
        raise NMPatternError(f"{tuple(values.shape)} kept values where {expected} were expected")
    positions, _ = _subsets(shape.m, shape.kept)
    codes = _from_bits(packed, shape.bits, shape.groups)
    if bool((codes >= len(positions)).any()):
        raise NMPatternError("a subset code is out of range")
    kept_positions = positions[codes]
    weight = torch.zeros(shape.groups, shape.m, dtype=values.dtype)
    weight.scatter_(-1, kept_positions, values.reshape(shape.groups, shape.kept))
    keep = torch.zeros(shape.groups, shape.m, dtype=torch.bool)
    keep.scatter_(-1, kept_positions, True)
    return weight.reshape(shape.out_features, shape.in_features), keep.reshape(shape.out_features, shape.in_features)


def _to_bits(codes: Tensor, bits: int) -> Tensor:
    """Each code in ``bits`` bits, least significant first, packed 8 to a byte (uint8)."""
    if bits == 0:
        return torch.zeros(0, dtype=torch.uint8)
    stream = ((codes.unsqueeze(1) >> torch.arange(bits)) & 1).flatten()
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
    return (stream.reshape(-1, 8) << torch.arange(8)).sum(-1).to(torch.uint8)


def _from_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    if bits == 0:
        return torch.zeros(count, dtype=torch.long)
    needed = math.ceil(count * bits / 8)
    if packed.dtype != torch.uint8 or packed.numel() != needed:
        raise NMPatternError(f"{packed.numel()} position bytes where {needed} were expected")
    stream = ((packed.long().unsqueeze(1) >> torch.arange(8)) & 1).flatten()[: count * bits]
    return (stream.reshape(count, bits) << torch.arange(bits)).sum(-1)
