"""2:4 semi-structured sparsity: which pruned layers the hardware pattern can hold, and converting them.

NVIDIA's 2:4 pattern keeps at most 2 of every aligned 4 input weights (in our N-pruned
convention: at least 2 of 4 pruned). A block at level >= 2 of M = 4 always fits; for other M it
depends on where the zeros fell, so every layer is checked group by group. The packer itself does
not check: handed a group with 3 kept weights, it keeps 2 and silently drops one. Here a layer
that does not fit stays dense, with the reason reported.

`to_semi_structured` swaps fitting weights for 2:4 semi-structured tensors (CUDA, sm80+ only;
cuSPARSELt where this torch has it, else CUTLASS). A layer whose weights are all zero (a block at
level M) is left alone: export drops such blocks (`export.save_pruned`). A converted model still
reports its sparsity (`models.measure_sparsity`), its 2:4 verdicts, and saves dense weights through
``state_dict`` / ``save_pretrained``; torch cannot move or cast the sparse tensors, so ``.to()``
to another device or dtype is refused with the fix (`from_semi_structured` turns them dense again).
`pack_2of4` / `unpack_2of4` are a portable values + indices form of the same pattern (runs
anywhere; used to validate a layer by a round trip to dense).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .atomic_files import atomic_file
from .models import dense_weight, is_semi_structured, named_block_linears
from .nm import NMPatternError, check_pattern, is_conv1d, mask_of

log = logging.getLogger(__name__)


class SemiStructuredError(RuntimeError):
    """The 2:4 conversion cannot run here."""


@dataclass
class LayerVerdict:
    """Whether one block linear can be stored in the 2:4 format, and if not, why."""

    name: str
    shape: tuple[int, int]  # (out, in)
    fits: bool
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def max_kept_per_4(weight: Tensor) -> int:
    """Largest number of non-zeros in any aligned group of 4 along the input dim of (out, in)."""
    out_features, in_features = weight.shape
    return int((weight != 0).reshape(out_features, in_features // 4, 4).sum(-1).max())


def _kernel_class() -> type:
    """The 2:4 tensor class conversion builds: cuSPARSELt, or CUTLASS where it is forced
    (``SparseSemiStructuredTensor._FORCE_CUTLASS``) or where a CUDA torch lacks cuSPARSELt. (On a
    machine without CUDA the report assumes cuSPARSELt, which CUDA builds of torch ship with.)"""
    from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    no_cusparselt = torch.cuda.is_available() and not torch.backends.cusparselt.is_available()
    if SparseSemiStructuredTensor._FORCE_CUTLASS or no_cusparselt:
        return SparseSemiStructuredTensorCUTLASS
    return SparseSemiStructuredTensorCUSPARSELT


def _shape_constraints(dtype: torch.dtype) -> tuple[int, int] | None:
    """(min rows, min cols) the kernel needs for ``dtype`` (both also divisors), or None."""
    config = _kernel_class()._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    return None if config is None else (config.sparse_min_rows, config.sparse_min_cols)


def verdict(name: str, module: nn.Module, dtype: torch.dtype | None = torch.float16) -> LayerVerdict:
    """Check one linear against the 2:4 pattern and the kernel's layout, dtype and shape rules
    (``dtype=None``: the pattern only, as for the portable packed form). An all-zero layer (a
    block at level M) is not for the kernels: export removes its block."""
    if is_semi_structured(module.weight):
        return LayerVerdict(name, tuple(module.weight.shape), True, "converted to 2:4 semi-structured")
    weight = dense_weight(module).detach()
    if is_conv1d(module):
        shape = (weight.shape[1], weight.shape[0])
        return LayerVerdict(name, shape, False, "Conv1D stores (in, out); the 2:4 kernels take nn.Linear weights")
    shape = (weight.shape[0], weight.shape[1])
    if shape[1] % 4:
        return LayerVerdict(name, shape, False, f"input width {shape[1]} is not a multiple of 4")
    kept = max_kept_per_4(weight)
    if kept > 2:
        return LayerVerdict(name, shape, False, f"a group of 4 keeps {kept} weights; the packer would silently drop {kept - 2}")
    if dtype is None:
        return LayerVerdict(name, shape, True)
    if not bool(weight.any()):
        return LayerVerdict(name, shape, False, "all weights are zero (a block at level M): save_pruned drops the "
                                                "block; a 2:4 kernel would only multiply zeros")
    constraints = _shape_constraints(dtype)
    if constraints is None:
        return LayerVerdict(name, shape, False, f"dtype {dtype} has no {_kernel_class().__name__} kernel "
                                               "(use float16 or bfloat16)")
    rows, cols = constraints
    if shape[0] % rows or shape[1] % cols:
        return LayerVerdict(name, shape, False, f"shape {shape} is not a multiple of ({rows}, {cols}) for {dtype}")
    return LayerVerdict(name, shape, True)


def semi_structured_report(model: nn.Module, dtype: torch.dtype | None = torch.float16) -> list[LayerVerdict]:
    """A verdict for every block linear (``blocks.<i>.<name>``); runs anywhere."""
    return [verdict(name, module, dtype) for name, module in named_block_linears(model).items()]


def summarize(verdicts: list[LayerVerdict]) -> str:
    fitting = sum(v.fits for v in verdicts)
    reasons: dict[str, int] = {}
    for v in verdicts:
        if not v.fits:
            key = v.reason.split(";")[0]
            reasons[key] = reasons.get(key, 0) + 1
    detail = "; ".join(f"{count} x {reason}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return f"{fitting} of {len(verdicts)} block linears fit 2:4" + (f" (others: {detail})" if detail else "")


@torch.no_grad()
def to_semi_structured(model: nn.Module) -> list[LayerVerdict]:
    """Replace every fitting block linear's weight by a 2:4 semi-structured CUDA tensor, in place
    (masks baked first; layers that do not fit, or are all zeros, stay as they are). Every
    parameter must be on CUDA (sm80+) and the block linears in float16 or bfloat16: move and cast
    the model first, since the converted tensors cannot be moved or cast. Returns the verdicts."""
    if not torch.cuda.is_available():
        raise SemiStructuredError(
            "2:4 semi-structured tensors need CUDA (an sm80+ GPU): torch.sparse.to_sparse_semi_structured "
            "does not run on CPU. semi_structured_report(model) still shows which layers would convert, "
            "and pack_2of4 gives a portable packed form."
        )
    from torch.nn.utils import parametrize

    elsewhere = next(((n, p.device) for n, p in model.named_parameters() if not p.is_cuda), None)
    if elsewhere is not None:
        raise SemiStructuredError(f"{elsewhere[0]} is on {elsewhere[1]}: 2:4 kernels run on CUDA, so move the whole "
                                  "model first (model.cuda())")
    modules = named_block_linears(model)
    wrong = next(((n, m.weight.dtype) for n, m in modules.items() if m.weight.dtype not in (torch.float16, torch.bfloat16)), None)
    if wrong is not None:
        raise SemiStructuredError(f"{wrong[0]} is {wrong[1]}: the 2:4 kernels take float16 or bfloat16, so cast the "
                                  "model first (model.half() or model.to(torch.bfloat16))")
    for device in {m.weight.device for m in modules.values()}:
        if torch.cuda.get_device_capability(device) < (8, 0):
            raise SemiStructuredError(f"2:4 sparse kernels need an sm80+ GPU (Ampere or newer); {device} is "
                                      f"sm{''.join(map(str, torch.cuda.get_device_capability(device)))}")
    kernel = _kernel_class()
    if kernel.__name__.endswith("CUTLASS") and not torch.backends.cusparselt.is_available():
        log.info("this torch has no cuSPARSELt: converting with the CUTLASS 2:4 kernels")
    verdicts = [verdict(name, module, module.weight.dtype) for name, module in modules.items()]
    converted = {v.name: kernel.from_dense(modules[v.name].weight.detach().contiguous())
                 for v in verdicts if v.fits and not is_semi_structured(modules[v.name].weight)}  # all first: a failure changes nothing
    for name, sparse in converted.items():
        module = modules[name]
        if mask_of(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        install_semi_structured(module, sparse)
    log.info(summarize(verdicts))
    return verdicts


def install_semi_structured(module: nn.Module, sparse: Tensor) -> None:
    """Make ``sparse`` (a 2:4 semi-structured tensor) the weight of ``module``: it saves its
    weight dense (``state_dict``), and refuses ``.to()`` to another device or dtype with the fix."""
    module.weight = nn.Parameter(sparse, requires_grad=False)
    if not getattr(module, "_msp_dense_on_save", False):
        module.register_state_dict_post_hook(_save_dense_weight)
        module._msp_dense_on_save = True
    if not isinstance(module, _SemiStructuredModule):
        module.__class__ = _semi_structured_class(type(module))


def from_semi_structured(model: nn.Module) -> int:
    """Turn every 2:4 semi-structured block-linear weight back into a dense one (same values), so
    the model can be moved or cast; returns how many."""
    count = 0
    for module in named_block_linears(model).values():
        if is_semi_structured(module.weight):
            dense = module.weight.to_dense()
            module.__class__ = module.__class__.__bases__[1]
            module.weight = nn.Parameter(dense, requires_grad=False)
            count += 1
    return count


def _save_dense_weight(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post-hook: a semi-structured weight is saved dense (safetensors and
    ``from_pretrained`` read plain tensors), so the saved model is the pruned model."""
    key = prefix + "weight"
    if key in state_dict and is_semi_structured(state_dict[key]):
        state_dict[key] = state_dict[key].to_dense()


class _SemiStructuredModule:
    """Mixed into a module holding a 2:4 semi-structured weight: ``.to()`` / ``.half()`` /
    ``.cuda(other)`` would hand the weight to torch's sparse tensor class, which cannot move or
    cast it; refuse with the fix instead (a move or cast that changes nothing passes)."""

    def _apply(self, fn, recurse=True):
        probe = torch.empty(0, device=self.weight.device, dtype=self.weight.dtype)
        moved = fn(probe)
        if (moved.device, moved.dtype) != (probe.device, probe.dtype):
            raise SemiStructuredError(
                f"a 2:4 semi-structured {type(self).__bases__[1].__name__} cannot move from {probe.device} "
                f"{probe.dtype} to {moved.device} {moved.dtype}: move and cast the model before to_semi_structured, "
                "or call semistructured.from_semi_structured(model) first")
        return super()._apply(fn, recurse)


_CLASSES: dict[type, type] = {}


def _semi_structured_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"SemiStructured{cls.__name__}", (_SemiStructuredModule, cls), {})
    return _CLASSES[cls]


# ---------------------------------------------------------------------------- portable packing
def pack_2of4(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Pack a 2:4 weight (out, in) into ``values`` (out, in/2) and ``indices`` (out, in/2, uint8,
    position 0..3 of each kept value in its group, ascending). Raises `NMPatternError` naming the
    first group with more than 2 non-zeros instead of dropping any."""
    out_features, in_features = weight.shape
    check_pattern(weight, 2, 4, "2:4 packing")
    grouped = weight.reshape(out_features, in_features // 4, 4)
    order = (grouped == 0).to(torch.int8).argsort(dim=-1, stable=True)  # non-zeros first, in order
    indices = order[..., :2].sort(dim=-1).values
    values = grouped.gather(-1, indices)
    return values.reshape(out_features, in_features // 2), indices.to(torch.uint8).reshape(out_features, in_features // 2)


def unpack_2of4(values: Tensor, indices: Tensor) -> Tensor:
    """Inverse of `pack_2of4`: the dense (out, in) weight."""
    out_features, half = values.shape
    dense = torch.zeros(out_features, half // 2, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, indices.reshape(out_features, half // 2, 2).long(), values.reshape(out_features, half // 2, 2))
    return dense.reshape(out_features, half * 2)


def pack_checked(weight: Tensor) -> tuple[Tensor, Tensor]:
    """`pack_2of4`, then verify that unpacking gives ``weight`` back exactly."""
    values, indices = pack_2of4(weight)
    if not torch.equal(unpack_2of4(values, indices), weight):
        raise NMPatternError("2:4 round trip changed the weight")  # pragma: no cover - a packing bug
    return values, indices


def save_packed_2of4(model: nn.Module, path: str | os.PathLike) -> list[LayerVerdict]:
    """Write the fitting block linears of ``model`` in packed form (``<name>.values`` and
    ``<name>.indices``) to one safetensors file, each checked by a round trip to dense; the file
    appears only when complete. Returns the verdicts (the pattern only: kernel dtype and shape
    rules do not apply to this form)."""
    from safetensors.torch import save_file

    verdicts = semi_structured_report(model, dtype=None)
    modules = named_block_linears(model)
    tensors: dict[str, Tensor] = {}
    for v in verdicts:
        if v.fits:
            values, indices = pack_checked(modules[v.name].weight.detach().contiguous())
            tensors[f"{v.name}.values"], tensors[f"{v.name}.indices"] = values.contiguous(), indices.contiguous()
    with atomic_file(path) as staging:
        save_file(tensors, str(staging), metadata={"format": "msp-2of4-packed", "summary": summarize(verdicts)})
    return verdicts
