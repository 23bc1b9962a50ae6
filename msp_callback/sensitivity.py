"""Layer-wise sensitivity: the empirical Fisher trace per decoder block (paper Section 3.1, Eq. 4).

For calibration samples n = 1..N with loss L_n (the model's own mean next-token cross-entropy,
``labels = input_ids``), the trace of block b is

    tr_b = (1/N) * sum_n sum_{i in b} (dL_n / dtheta_i)^2

where theta_i ranges over the weights of the block's prunable linears only (`block_linears`:
``nn.Linear`` / GPT-2 ``Conv1D``); norms, biases, embeddings and the LM head are left out, since
they are never pruned. The same sum is also reported per linear.

Memory stays at one model's activations plus one linear's gradient at a time: only the linears'
weights require grad during the pass, and each weight's gradient is squared, summed into a
float64 accumulator and dropped as soon as autograd has produced it. No copy of the gradients is
kept, and the model is left as it was found (train/eval flags, ``requires_grad``, ``.grad``).

Masked (parametrized) linears: the gradient used is that of the *effective* weight
``W * mask`` (what the forward sees), so pruned positions count too; the stored original's
gradient would be the same times the mask.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from .models import block_linears, find_blocks, input_device
from .offload import OffloadError, offload_of
from .records import load_record, stamp, unstamp, write_json
from .sharded import is_sharded

log = logging.getLogger(__name__)

RESULT_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------- result
@dataclass
class SensitivityResult:
    """Fisher traces per block and per linear ("<block index>.<linear name>").

    ``num_samples`` counts calibration sequences (rows), ``num_micro_batches`` is the N of the
    average, ``tokens`` the token count seen, ``seconds`` the wall time of the pass.
    """

    block_traces: list[float]
    linear_traces: dict[str, float]
    num_samples: int
    micro_batch_size: int
    tokens: int
    seconds: float
    num_micro_batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return stamp(asdict(self), RESULT_FORMAT_VERSION)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SensitivityResult":
        data = unstamp(data, "sensitivity result", RESULT_FORMAT_VERSION, ValueError, default=RESULT_FORMAT_VERSION)
        data["block_traces"] = [float(v) for v in data["block_traces"]]
        data["linear_traces"] = {k: float(v) for k, v in data["linear_traces"].items()}
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityResult":
        return load_record(path, "sensitivity result", ValueError, cls.from_dict)


# ---------------------------------------------------------------------------- samples
def _rows(batches: Sequence[Tensor]) -> list[Tensor]:
    """Every calibration sequence (1-D token ids) of the given (B, T) or (T,) tensors."""
    rows: list[Tensor] = []
    for batch in batches:
        if batch.dim() not in (1, 2):
            raise ValueError(f"calibration batches must be token ids shaped (batch, seqlen), got {tuple(batch.shape)}")
        rows.extend(batch.reshape(-1, batch.shape[-1]).unbind(0))
    return rows


def _micro_batches(rows: list[Tensor], size: int) -> list[Tensor]:
    """Consecutive rows stacked ``size`` at a time; a length change starts a new micro-batch."""
    out: list[Tensor] = []
    current: list[Tensor] = []
    for row in rows:
        if current and (len(current) == size or row.shape != current[0].shape):
            out.append(torch.stack(current))
            current = []
        current.append(row)
    if current:
        out.append(torch.stack(current))
    return out


# ---------------------------------------------------------------------------- accumulation
class _Accumulator:
    """float64 sums of squared gradients, one per linear, kept on the weight's device."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}

    def add(self, key: str, grad: Tensor) -> None:
        if grad.device.type == "mps":  # no float64 there
            grad = grad.cpu()
        value = grad.float().square().sum(dtype=torch.float64)
        if key in self.sums:
            self.sums[key] += value
        else:
            self.sums[key] = value

    def totals(self, keys: Sequence[str], count: int) -> dict[str, float]:
        return {k: float(self.sums[k]) / count if k in self.sums else 0.0 for k in keys}


def _tracked_linears(blocks: nn.ModuleList) -> dict[str, nn.Module]:
    return {
        f"{index}.{name}": module
        for index, block in enumerate(blocks)
        for name, module in block_linears(block).items()
    }


def _leaves(module: nn.Module) -> list[nn.Parameter]:
    """The parameters behind ``module.weight``: the weight itself, or the parametrization's originals."""
    if parametrize.is_parametrized(module, "weight"):
        return list(module.parametrizations["weight"].parameters(recurse=False))
    return [module.weight]


@contextmanager
def _grad_only_for(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Only ``params`` require grad and start without ``.grad``; restores flags and grads after."""
    flags = {p: p.requires_grad for p in model.parameters()}
    grads = {p: p.grad for p in params}
    try:
        for p in flags:
            p.requires_grad_(False)
        for p in params:
            p.grad = None
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for p, grad in grads.items():
            p.grad = grad


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the pass; every module's own flag restored after."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield
    finally:
        for m, training in modes.items():
            m.training = training


@contextmanager
def _checkpointed(blocks: nn.ModuleList, enabled: bool) -> Iterator[None]:
    """Recompute each block's activations in backward (non-reentrant ``torch.utils.checkpoint``).

    Done here rather than with ``gradient_checkpointing_enable``, which transformers only apply
    in train mode."""
    if not enabled:
        yield
        return
    saved = [block.__dict__.get("forward") for block in blocks]
    try:
        for block in blocks:
            forward = block.forward

            def wrapped(*args: Any, _forward: Any = forward, **kwargs: Any) -> Any:
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

            block.forward = wrapped
        yield
    finally:
        for block, forward in zip(blocks, saved):
            if forward is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = forward


@contextmanager
def _hooks(linears: dict[str, nn.Module], acc: _Accumulator) -> Iterator[None]:
    """Post-accumulate hooks: plain weights add their squared grad to ``acc``, then every
    tracked leaf drops its ``.grad``. (Parametrized weights are counted in `_effective_weights`.)"""

    def make_hook(key: str | None):
        def hook(param: Tensor) -> None:
            if key is not None:
                acc.add(key, param.grad)
            param.grad = None

        return hook

    handles = []
    try:
        for key, module in linears.items():
            plain = not parametrize.is_parametrized(module, "weight")
            for leaf in _leaves(module):
                handles.append(leaf.register_post_accumulate_grad_hook(make_hook(key if plain else None)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _effective_weights(linears: dict[str, nn.Module], acc: _Accumulator) -> Iterator[None]:
    """For one forward/backward: cache every parametrized weight once and hook its gradient."""
    masked = {k: m for k, m in linears.items() if parametrize.is_parametrized(m, "weight")}
    if not masked:
        yield
        return
    with parametrize.cached():
        for key, module in masked.items():
            module.weight.register_hook(lambda grad, key=key: acc.add(key, grad))  # fills the cache
        yield


# ---------------------------------------------------------------------------- main entry
def fisher_traces(
    model: nn.Module,
    batches: Sequence[Tensor],
    micro_batch_size: int = 1,
    progress: bool = True,
    gradient_checkpointing: bool = False,
) -> SensitivityResult:
    """Empirical Fisher trace (Eq. 4) of every decoder block and block linear of ``model``.

    ``batches`` are token-id tensors (batch, seqlen); they are split into rows. With
    ``micro_batch_size=1`` each row is one sample n and this is Eq. 4 read per sample. With
    ``k > 1``, k consecutive rows form a micro-batch, each gradient is that of the micro-batch
    *mean* loss and N counts micro-batches: a cheaper approximation (k times fewer backward
    passes) that is *not* on the same scale, about 1/k of the per-sample trace when sample
    gradients are uncorrelated; compare only traces taken with the same ``micro_batch_size``.
    ``gradient_checkpointing`` trades compute for activation memory. Runs in eval mode and works
    inside ``torch.inference_mode()``; the model is returned as it was given.
    """
    if len(batches) == 0:
        raise ValueError("fisher_traces needs calibration data: got an empty list of token-id batches")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    offload = offload_of(model)
    if offload is not None and offload.device.type != "cpu":
        raise OffloadError("Fisher traces of a model whose blocks are offloaded to a GPU one at a time are not supported "
                           "yet: use init=sensitivity (the default) or another allocation than fisher, or --device cpu")
    if is_sharded(model):
        raise ValueError("Fisher traces of an FSDP-sharded model are not supported yet: use init=sensitivity (the "
                         "default) or another allocation than fisher")
    rows = _rows(batches)
    chunks = _micro_batches(rows, micro_batch_size)
    blocks = find_blocks(model)
    linears = _tracked_linears(blocks)
    leaves = [p for m in linears.values() for p in _leaves(m)]
    device = input_device(model)
    acc = _Accumulator()
    start = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(_eval_mode(model))
        stack.enter_context(_grad_only_for(model, leaves))
        stack.enter_context(_checkpointed(blocks, gradient_checkpointing))
        stack.enter_context(_hooks(linears, acc))
        for chunk in tqdm(chunks, desc="fisher trace", disable=not progress):
            ids = chunk.to(device).clone()  # a normal tensor even if made under inference mode
            with _effective_weights(linears, acc):
                model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    result = _result(acc, linears, len(blocks), chunks, micro_batch_size, time.perf_counter() - start)
    log.info(
        "Fisher traces of %d blocks from %d samples (%d micro-batches, %d tokens) in %.1fs",
        len(result.block_traces), result.num_samples, len(chunks), result.tokens, result.seconds,
    )
    return result


def _result(
    acc: _Accumulator,
    linears: dict[str, nn.Module],
    num_blocks: int,
    chunks: list[Tensor],
    micro_batch_size: int,
    seconds: float,
) -> SensitivityResult:
    traces = acc.totals(list(linears), len(chunks))
    blocks = [0.0] * num_blocks
    for key, value in traces.items():
        blocks[int(key.split(".", 1)[0])] += value
    return SensitivityResult(
        block_traces=blocks,
        linear_traces=traces,
        num_samples=sum(c.shape[0] for c in chunks),
        micro_batch_size=micro_batch_size,
        tokens=sum(c.numel() for c in chunks),
        seconds=seconds,
        num_micro_batches=len(chunks),
    )
