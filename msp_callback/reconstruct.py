"""Block-wise reconstruction: prune each block, then train its kept weights to give the dense
block's output, masks held, before the next block is pruned (one sequential pass).

For each block in order (`reconstruct`):

1. the *target* is computed while the block is still dense: with ``target="dense"`` the dense
   block's output on the dense model's own hidden states (a second stream of hidden states is
   carried beside the pruned model's, so error carried in from earlier blocks is corrected too);
   with ``target="pruned"`` the dense block's output on the pruned model's inputs;
2. the block is pruned at the plan's level by the criterion, exactly as `pruner.prune` does
   (SparseGPT's own weight update included) and its masks installed;
3. its trainable tensors (the masked linears' stored originals, level-0 linears whole, norms and
   biases) are trained with Adam (by default each tensor's learning rate relative to its own
   scale, see `learning_rates`) on the squared error, relative to the target's, between the block's output
   on the pruned model's inputs and the target, each channel first divided by its root-mean-square
   over the block's targets (``loss="channel"``, see `channel_scale`; ``"token"`` leaves the channels
   raw). A masked weight is used as ``original * mask``,
   so pruned weights get no gradient and stay exactly zero. A 16-bit block trains as a float32
   copy and is written back in its dtype;
4. after each epoch the loss on *held-out* windows (calibration text apart from the calibration
   rows) is measured; the block keeps the epoch with the lowest held-out loss (the pruned weights
   when no epoch beats them) and stops after ``patience`` epochs without a new best;
5. the block's output on the pruned model's inputs feeds the next block.

Memory: one block's float32 weights, gradients and two Adam moments (16 bytes a block parameter),
plus two or three streams of calibration hidden states. With a checkpoint folder every finished
block is saved (`block_NNNN.pt`: its trained tensors, masks and report); a rerun resumes after
the last one saved and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic_files import atomic_file
from .block_walk import BlockInputs, block_output, run_block, walk_blocks
from .config import ReconstructSettings
from .criteria import Criterion
from .data import token_digest
from .models import block_linears
from .nm import install_mask, mask_of
from .plan import SparsityPlan
from .pruner import prepare_prune, prune_block
from .saving import record_in_config
from .sharded import is_sharded

log = logging.getLogger(__name__)

RESUME_SETTINGS = ("reconstruct_epochs", "reconstruct_target", "reconstruct_loss", "reconstruct_lr", "reconstruct_step",
                   "reconstruct_schedule", "reconstruct_batch_size", "reconstruct_holdout", "reconstruct_patience")


class ReconstructionError(ValueError):
    """A reconstruction that cannot run as asked."""


@dataclass
class BlockReport:
    """What reconstruction did to one block: normalised MSE to the target before and after."""

    block: int
    epochs: int  # epochs run
    best_epoch: int  # the epoch whose weights were kept (0 = the pruned weights)
    train_before: float
    train_after: float
    holdout_before: float | None
    holdout_after: float | None
    seconds: float

    def line(self) -> str:
        held = (f", held-out {self.holdout_before:.4f} -> {self.holdout_after:.4f}"
                if self.holdout_before is not None else "")
        return (f"block {self.block}: train {self.train_before:.4f} -> {self.train_after:.4f}{held} "
                f"(kept epoch {self.best_epoch} of {self.epochs}, {self.seconds:.1f} s)")


def relative_error(output: Tensor, target: Tensor, per: str = "token", scale: Tensor | None = None) -> Tensor:
    """Squared error relative to the target's squared norm (float32): per token, then averaged
    (``per="token"``), or over the whole batch at once (``per="batch"``). ``scale`` (one value a
    channel) divides both first, so that every channel weighs alike (see `channel_scale`)."""
    output, target = output.float(), target.float()
    if scale is not None:
        output, target = output / scale, target / scale
    if per == "batch":
        return (output - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)
    return ((output - target).pow(2).sum(-1) / target.pow(2).sum(-1).clamp_min(1e-12)).mean()


# ---------------------------------------------------------------------------- batches
def _rows(value: Any, rows: slice, batch: int) -> Any:
    """``value`` restricted to batch rows ``rows``: tensors of two or more dims whose first dim is
    the batch size are sliced (hidden states, masks, rotary tables per row), the rest kept."""
    if isinstance(value, Tensor):
        return value[rows] if value.dim() >= 2 and value.shape[0] == batch and batch > 1 else value
    if isinstance(value, tuple):
        return tuple(_rows(v, rows, batch) for v in value)
    if isinstance(value, list):
        return [_rows(v, rows, batch) for v in value]
    if isinstance(value, dict):
        return {k: _rows(v, rows, batch) for k, v in value.items()}
    return value


@dataclass
class _Step:
    """One optimizer step's inputs: hidden rows, the block's other call arguments, target rows."""

    hidden: Tensor
    args: tuple
    kwargs: dict
    target: Tensor


def _steps(inputs: BlockInputs, targets: list[Tensor], size: int) -> list[_Step]:
    """The captured batches cut into steps of at most ``size`` rows."""
    steps = []
    for hidden, args, kwargs, target in zip(inputs.hidden, inputs.args, inputs.kwargs, targets):
        batch = hidden.shape[0]
        for start in range(0, batch, size):
            rows = slice(start, min(start + size, batch))
            steps.append(_Step(hidden[rows], _rows(args, rows, batch), _rows(kwargs, rows, batch), target[rows]))
    return steps


def _part(inputs: BlockInputs, part: slice) -> BlockInputs:
    return BlockInputs(inputs.hidden[part], inputs.args[part], inputs.kwargs[part])


# ---------------------------------------------------------------------------- one block
def channel_scale(targets: Sequence[Tensor]) -> Tensor:
    """Each channel's root-mean-square over ``targets`` (float32, one value a channel: the last dim).

    Residual streams carry channels of very different sizes; a squared error on the raw channels is
    then mostly the large ones', and training can match them while it spoils the small channels that
    the model's norms scale back up and read. Measured on Gemma-3-270M, Wanda 3:4 MSP, 8 x 1024 held-out
    tokens: plain pruning 490; reconstruction on raw channels 4,638 (every block's raw error lower, on
    held-out text too); on channels divided by this scale 290; scaling down only the channels above the
    median 960."""
    total = sum(t.float().pow(2).sum(dim=tuple(range(t.dim() - 1))) for t in targets)
    count = sum(t[..., 0].numel() for t in targets)
    return (total / count).sqrt().clamp_min(1e-6)


def learning_rates(params: Sequence[Tensor], lr: float, step: str = "relative") -> list[dict[str, Any]]:
    """Adam parameter groups: ``lr`` for every tensor (``step="absolute"``), or ``lr`` times each
    tensor's root-mean-square when training starts, at least 1e-3 (``"relative"``, like Adafactor's
    parameter scale), so that a step moves every tensor by a similar fraction of its size whatever the
    model's weight scale. A masked linear's stored weight holds zeros where it is pruned, and they count:
    at 3:4 its rate is about half that of its kept weights' own scale. Measured dense weight scales:
    SmolLM2-135M's block linears about 0.19, Gemma-3-270M's 0.04 (down_proj 0.02), its norms 1 to 400."""
    if step == "absolute":
        return [{"params": list(params), "lr": lr}]
    if step != "relative":
        raise ReconstructionError(f"reconstruct_step {step!r} is unknown: use 'relative' or 'absolute'")
    return [{"params": [p], "lr": lr * max(1e-3, float(p.detach().float().pow(2).mean().sqrt()))} for p in params]


def _loss(block: nn.Module, steps: list[_Step], error: Callable[[Tensor, Tensor], Tensor]) -> float:
    """Mean of ``error(output, target)`` of ``block`` over ``steps``, no gradients."""
    with torch.no_grad():
        return sum(float(error(block_output(block(s.hidden, *s.args, **s.kwargs)), s.target)) for s in steps) / len(steps)


def _as_float(step: _Step) -> _Step:
    return _Step(step.hidden.float(), step.args, step.kwargs, step.target)


def train_block(block: nn.Module, train: list[_Step], holdout: list[_Step], settings: ReconstructSettings,
                seed: int = 0, index: int = 0) -> BlockReport:
    """Train ``block``'s parameters in place toward the steps' targets (see the module docstring)."""
    started = time.perf_counter()
    error = partial(relative_error, per="batch" if settings.reconstruct_loss == "batch" else "token",
                    scale=channel_scale([s.target for s in train]) if settings.reconstruct_loss == "channel" else None)
    dtype = next(block.parameters()).dtype
    params = [p for p in block.parameters() if p.is_floating_point()]
    masks = [mask_of(m) for m in block_linears(block).values()]
    if all(mask is not None and not bool(mask.any()) for mask in masks):  # every linear fully pruned
        loss = _loss(block, train, error)
        return BlockReport(index, 0, 0, loss, loss, None, None, time.perf_counter() - started)
    was_training = block.training
    flags = [p.requires_grad for p in params]
    block.eval()  # no dropout: the target is deterministic
    if dtype != torch.float32:
        block.float()  # a float32 master copy of this one block; written back in its dtype below
        train, holdout = [_as_float(s) for s in train], [_as_float(s) for s in holdout]
    try:
        before = _loss(block, train, error)
        holdout_before = best = _loss(block, holdout, error) if holdout else math.inf
        best_state = [p.detach().clone() for p in params] if holdout else None
        best_epoch, epochs, stale = 0, 0, 0
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)  # the same order on a resumed run
        optimizer = torch.optim.Adam(learning_rates(params, settings.reconstruct_lr, settings.reconstruct_step))
        total = settings.reconstruct_epochs * len(train)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, (lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
                                                     if settings.reconstruct_schedule == "cosine" else (lambda step: 1.0))
        with torch.inference_mode(False), torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            for epoch in range(1, settings.reconstruct_epochs + 1):
                epochs = epoch
                for i in torch.randperm(len(train), generator=generator).tolist():
                    s = train[i]
                    loss = error(block_output(block(s.hidden, *s.args, **s.kwargs)), s.target)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                if not holdout:
                    best_epoch = epoch
                    continue
                value = _loss(block, holdout, error)
                if value < best:
                    best, best_epoch, stale = value, epoch, 0
                    best_state = [p.detach().clone() for p in params]
                else:
                    stale += 1
                    if stale >= settings.reconstruct_patience:
                        break
        if best_state is not None:
            with torch.no_grad():
                for p, saved in zip(params, best_state):
                    p.copy_(saved)
        after = _loss(block, train, error)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        if dtype != torch.float32:
            block.to(dtype)
        block.train(was_training)
    return BlockReport(index, epochs, best_epoch, before, after, holdout_before if holdout else None,
                       best if holdout else None, time.perf_counter() - started)


# ---------------------------------------------------------------------------- checkpoint
class _Checkpoint:
    """One file per finished block in a folder; a rerun loads them back in order."""

    def __init__(self, folder: str | Path | None, identity: dict[str, Any]):
        self.folder = Path(folder) if folder else None
        self.identity = identity

    def _path(self, index: int) -> Path:
        assert self.folder is not None
        return self.folder / f"block_{index:04d}.pt"

    def save(self, index: int, block: nn.Module, report: BlockReport) -> None:
        if self.folder is None:
            return
        state = {"kind": "msp-reconstruction", "identity": self.identity, "report": asdict(report),
                 "params": {n: p.detach().cpu() for n, p in block.named_parameters()},
                 "masks": {n: mask.cpu() for n, m in block_linears(block).items() if (mask := mask_of(m)) is not None}}
        with atomic_file(self._path(index)) as tmp:
            torch.save(state, tmp)

    def load(self, index: int) -> dict[str, Any] | None:
        """The saved state of block ``index``, or None when it was not finished."""
        if self.folder is None or not self._path(index).exists():
            return None
        path = self._path(index)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged file
            raise ReconstructionError(f"{path} is damaged ({error}); remove {self.folder} to reconstruct anew") from None
        if not isinstance(state, dict) or state.get("kind") != "msp-reconstruction":
            raise ReconstructionError(f"{path} is not a reconstruction checkpoint: remove it or choose another "
                                      "reconstruct_checkpoint folder")
        saved = state.get("identity", {})
        changed = [k for k in self.identity if saved.get(k) != self.identity[k]]
        if changed:
            raise ReconstructionError(f"{self.folder} was written for another run (its {', '.join(changed)} differ): "
                                      "resume with the same model, plan, data and reconstruct_* settings, or remove "
                                      "the folder to start over")
        return state

    def clear(self) -> None:
        """Remove the saved blocks (a new run that is not a resume)."""
        if self.folder is not None and self.folder.is_dir():
            for path in self.folder.glob("block_*.pt"):
                path.unlink()


@torch.no_grad()
def _restore(block: nn.Module, state: dict[str, Any]) -> BlockReport:
    linears = block_linears(block)
    for name, mask in state["masks"].items():
        install_mask(linears[name], mask.to(linears[name].weight.device))
    params = dict(block.named_parameters())
    if set(params) != set(state["params"]):
        raise ReconstructionError("a reconstruction checkpoint's block does not match this model's block: remove the "
                                  "checkpoint folder to start over")
    for name, p in params.items():
        p.copy_(state["params"][name])
    return BlockReport(**state["report"])


# ---------------------------------------------------------------------------- the walk
def reconstruct(
    model: nn.Module,
    plan: SparsityPlan,
    calibration: Sequence[Tensor],
    settings: ReconstructSettings,
    holdout: Sequence[Tensor] = (),
    criterion: str | Criterion | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> list[BlockReport]:
    """Prune ``model`` in place to ``plan`` (like `pruner.prune`) and reconstruct every block
    right after it is pruned; returns one report per block.

    Args:
        calibration: batches of token ids (B, T): the criterion's statistics and the training rows.
        holdout: batches of token ids from the calibration text, apart from ``calibration``:
            early stopping and the choice of each block's epoch (none: the last epoch is kept).
        resume: continue from ``settings.reconstruct_checkpoint`` (else it is cleared first).
        seed: the order of the training steps.
    """
    if is_sharded(model):
        raise ReconstructionError("reconstruction of an FSDP-sharded model is not supported: prune without "
                                  "reconstruct_epochs, or use --offload disk for a model larger than one device")
    if settings.reconstruct_epochs == 0:
        raise ReconstructionError("reconstruct_epochs is 0: nothing to reconstruct (use pruner.prune)")
    if not calibration:
        raise ReconstructionError("reconstruction needs calibration batches: pass calibration=[token-id tensors]")
    criterion, install = prepare_prune(model, plan, criterion)
    checkpoint = _Checkpoint(settings.reconstruct_checkpoint, {
        "plan": {"levels": plan.levels, "m": plan.m, "criterion": criterion.name, "granularity": plan.granularity},
        "data": token_digest([*calibration, *holdout]), "seed": seed, **{k: getattr(settings, k) for k in RESUME_SETTINGS}})
    if not resume:
        checkpoint.clear()
    n_train = len(calibration)
    size = settings.reconstruct_batch_size
    reports: list[BlockReport] = []
    dense: list[Tensor] = []  # the dense model's hidden states entering the current block (target="dense")

    def visit(index: int, block: nn.Module, inputs: BlockInputs | None) -> None:
        assert inputs is not None
        own = settings.reconstruct_target == "dense"
        if own and index == 0:
            dense[:] = inputs.hidden
        targets = run_block(block, BlockInputs(dense, inputs.args, inputs.kwargs) if own else inputs)
        if own:
            dense[:] = targets  # the dense stream moves on
        saved = checkpoint.load(index)
        if saved is not None:
            reports.append(_restore(block, saved))
            return
        train_inputs = _part(inputs, slice(0, n_train))
        prune_block(block, plan.linear_levels(index, block_linears(block)), plan.m, criterion, train_inputs, install)
        report = train_block(block, _steps(train_inputs, targets[:n_train], size),
                             _steps(_part(inputs, slice(n_train, None)), targets[n_train:], size),
                             settings, seed, index)
        log.info("reconstruction %s", report.line())
        checkpoint.save(index, block, report)
        reports.append(report)

    walk_blocks(model, [*calibration, *holdout], visit, desc=f"prune + reconstruct ({criterion.name})",
                progress=progress, writes=True)
    record_in_config(model, plan)
    return reports
