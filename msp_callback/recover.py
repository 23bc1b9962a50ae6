"""Recovery: distil the pruned model back toward the dense one, with the N:M masks held.

The teacher is the same model before pruning. Its top-k next-token log-probabilities on the
recovery windows are computed once, while the model is still dense (`teacher_targets`), so no
second model is kept: the loss is KL(dense || pruned) over those k tokens and one bucket for the
rest of the vocabulary (`kd_loss`) (``loss="lm"`` trains on the plain next-token loss instead, for comparison).

What trains (``method``):

- ``sparse``: every parameter of the decoder blocks. A pruned linear's trainable tensor is its
  parametrization's original, and the weight the model uses is ``original * mask``, so the
  gradient of every pruned position is exactly zero and pruned weights stay exactly zero.
  Embeddings, the final norm and the head stay frozen. bfloat16 weights (the GPU default) train
  as float32 master copies for the duration, with the forward under bfloat16 autocast, and are
  rounded back at the end (16-bit weights alone would lose most small updates); float16 weights
  are refused. AdamW keeps two float32 moments per trained parameter (8 bytes a parameter on top
  of the weights and their gradient).
- ``lora``: sparse LoRA adapters (`lora.sparse_lora`, peft) on every masked linear, merged into
  the weights at the end, so the result is the same masked model with updated kept weights.

`recover` saves its state every ``save_every`` steps when given a checkpoint file and continues
from it when one exists: an interrupted and resumed run ends with the same weights as an
uninterrupted one (same batches, same order; recovery runs with dropout off, so nothing else in
the loop is random). A checkpoint written with other settings (loss, method, learning rate,
batches, LoRA rank) is refused.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .atomic_files import atomic_file
from .config import RecoverSettings, label
from .models import find_blocks, input_device
from .nm import masked_modules

log = logging.getLogger(__name__)

class RecoveryError(ValueError):
    """A recovery that cannot run as asked."""


@dataclass
class TeacherTargets:
    """The dense model's top-k next-token log-probabilities of each recovery batch (on the CPU)."""

    logprobs: list[Tensor]  # (B, T, k) float32
    tokens: list[Tensor]  # (B, T, k) int32 vocabulary ids

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in zip(self.logprobs, self.tokens) for t in pair)


@torch.no_grad()
def teacher_targets(model: nn.Module, batches: Sequence[Tensor], top_k: int = 64, progress: bool = True
                    ) -> TeacherTargets:
    """Top-k log-probabilities of the (dense) ``model`` on each batch: call before pruning."""
    from tqdm.auto import tqdm

    if not batches:
        raise RecoveryError("no recovery batches: give at least one window of token ids")
    device = input_device(model)
    was_training = model.training
    model.eval()
    logprobs, tokens = [], []
    for batch in tqdm(batches, desc="teacher targets", disable=not progress):
        logits = model(input_ids=batch.to(device), use_cache=False).logits
        if top_k > logits.shape[-1]:
            raise RecoveryError(f"{label(RecoverSettings, 'recover_top_k')} {top_k} is more than the vocabulary's "
                                f"{logits.shape[-1]} tokens: lower it")
        values, index = logits.float().log_softmax(-1).topk(top_k, -1)
        logprobs.append(values.cpu())
        tokens.append(index.to(torch.int32).cpu())
    model.train(was_training)
    targets = TeacherTargets(logprobs, tokens)
    log.info("teacher targets: %d batches, top-%d, %.1f MB", len(batches), top_k, targets.nbytes / 2**20)
    return targets


def kd_loss(logits: Tensor, logprobs: Tensor, tokens: Tensor) -> Tensor:
    """Mean per-token KL(teacher || student) between the distributions coarsened to the
    teacher's top-k tokens plus one bucket for all the rest: never negative, and the full KL when
    k covers the vocabulary. (The top-k sum alone, which ranks candidates well enough for the
    search's KL fitness, goes negative under training: the student learns to put more mass on
    the k tokens than the teacher does.)"""
    student = logits.float().log_softmax(-1).gather(-1, tokens.long())
    teacher_rest, student_rest = _log_rest(logprobs), _log_rest(student)
    top = (logprobs.exp() * (logprobs - student)).sum(-1)
    rest = teacher_rest.exp() * (teacher_rest - student_rest)
    return (top + rest).mean()


def _log_rest(logprobs: Tensor) -> Tensor:
    """log(1 - sum(exp(logprobs))) over the last dim: the log-mass outside the given tokens."""
    return torch.log((-torch.expm1(logprobs.logsumexp(-1))).clamp_min(1e-12))


def lm_loss(logits: Tensor, batch: Tensor) -> Tensor:
    """Mean next-token cross-entropy."""
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten())


def _trainable_blocks(model: nn.Module) -> dict[str, nn.Parameter]:
    """sparse: every parameter of the decoder blocks (pruned linears train their originals)."""
    blocks = find_blocks(model)
    inside = {id(p) for p in blocks.parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) in inside}


def _add_lora(model: nn.Module, rank: int, seed: int) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:  # pragma: no cover - peft is a dependency
        raise RecoveryError("recover_method='lora' needs peft (pip install peft)") from error
    from .lora import sparse_lora

    targets = [name for name, _ in masked_modules(model)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the adapters' initialisation
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=targets))
    sparse_lora(peft_model)
    return peft_model


def recover(
    model: nn.Module,
    batches: Sequence[Tensor],
    settings: RecoverSettings,
    teacher: TeacherTargets | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    seed: int = 0,
) -> list[float]:
    """Train the pruned, masked ``model`` in place for ``settings.recover_steps`` steps, cycling
    through ``batches`` (token ids, each (B, T)); returns each step's loss. ``teacher`` (from
    `teacher_targets` on the same batches, before pruning) is required for ``recover_loss="kd"``.
    ``on_step(step, loss)`` is called after each step (1-based; its time does not count against
    ``recover_max_minutes``); ``seed`` initialises LoRA adapters."""
    from tqdm.auto import tqdm

    steps = settings.recover_steps
    if steps == 0:
        return []
    if not batches:
        raise RecoveryError("no recovery batches: give at least one window of token ids")
    if next(masked_modules(model), None) is None:
        raise RecoveryError("the model carries no N:M masks: prune it first (recovery holds the masks it finds)")
    if settings.recover_loss == "kd":
        if teacher is None:
            raise RecoveryError("recover_loss='kd' needs the dense model's targets: call teacher_targets(model, "
                                "batches) before pruning, or use recover_loss='lm'")
        if len(teacher.logprobs) != len(batches):
            raise RecoveryError(f"teacher targets for {len(teacher.logprobs)} batches, but {len(batches)} batches given")
    if settings.recover_method == "sparse":
        check_trainable_dtype(next(iter(_trainable_blocks(model).values())).dtype)
    device = input_device(model)
    frozen = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    trained = model
    finished = False
    masters: dict[nn.Parameter, torch.dtype] = {}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        if settings.recover_method == "lora":
            trained = _add_lora(model, settings.recover_lora_rank, seed)
        params = ({n: p for n, p in trained.named_parameters() if "lora_" in n} if settings.recover_method == "lora"
                  else _trainable_blocks(model))
        for p in params.values():
            p.requires_grad_(True)
        masters = _float32_masters(params)  # bf16 weights train as float32 copies, the forward autocast to bf16
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if masters else contextlib.nullcontext()
        optimizer = torch.optim.AdamW(params.values(), lr=settings.recover_lr, weight_decay=0.0)
        losses: list[float] = []
        start = _resume(settings.recover_checkpoint, settings, params, optimizer, losses)
        trained.eval()  # no dropout: the student should match the teacher's deterministic outputs
        limit = settings.recover_max_minutes * 60 or float("inf")
        training_seconds = 0.0
        with torch.inference_mode(False), torch.enable_grad():
            bar = tqdm(range(start, steps), desc="recovery", disable=not progress, initial=start, total=steps)
            for step in bar:
                started = time.perf_counter()
                index = step % len(batches)
                batch = batches[index].to(device)
                with autocast:
                    logits = trained(input_ids=batch, use_cache=False).logits
                if settings.recover_loss == "kd":
                    loss = kd_loss(logits, teacher.logprobs[index].to(device), teacher.tokens[index].to(device))
                else:
                    loss = lm_loss(logits, batch)
                del logits
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                done = step + 1
                if settings.recover_checkpoint and (done % settings.recover_save_every == 0 or done == steps):
                    _save(settings.recover_checkpoint, done, settings, params, optimizer, losses)
                training_seconds += time.perf_counter() - started
                if on_step is not None:
                    on_step(done, losses[-1])
                if training_seconds >= limit and done < steps:
                    log.info("recovery stopped at step %d of %d: recover_max_minutes=%g reached", done, steps,
                             settings.recover_max_minutes)
                    if settings.recover_checkpoint and done % settings.recover_save_every:
                        _save(settings.recover_checkpoint, done, settings, params, optimizer, losses)
                    break
        finished = True
    finally:
        # on an error: LoRA adapters are dropped (the pruned weights stay as they were); with the
        # sparse method the weights keep the steps taken so far. A checkpoint resumes either.
        with torch.no_grad():
            for p, dtype in masters.items():
                p.data = p.data.to(dtype)
        if settings.recover_method == "lora" and trained is not model:
            trained.merge_and_unload() if finished else trained.unload()
        model.train(was_training)
        for p, flag in frozen.items():
            p.requires_grad_(flag)
    log.info("recovery: %d steps, loss %.4f -> %.4f", len(losses), losses[0], losses[-1])
    return losses


RESUME_SETTINGS = ("recover_method", "recover_loss", "recover_lr", "recover_batch_size", "recover_seqlen",
                   "recover_windows", "recover_top_k", "recover_lora_rank")


def check_trainable_dtype(dtype: torch.dtype) -> None:
    """The sparse method trains the weights themselves: bfloat16 ones through float32 masters
    (`_float32_masters`); float16 would need loss scaling as well, not built: refused."""
    if dtype == torch.float16:
        raise RecoveryError("recover_method='sparse' does not train float16 weights (they need loss scaling): load "
                            "the model in bfloat16 or float32 (--dtype bf16 / float32), or use --recover-method lora")


@torch.no_grad()
def _float32_masters(params: dict[str, nn.Parameter]) -> dict[nn.Parameter, torch.dtype]:
    """Turn the bfloat16 trained parameters into float32 ones for the duration (their master
    copies: AdamW's small updates would round away in bf16); returns {parameter: its dtype}, to
    round them back after (`recover` does)."""
    masters = {p: p.dtype for p in params.values() if p.dtype == torch.bfloat16}
    for p in masters:
        p.data = p.data.float()
    return masters


def _save(path: str, step: int, settings: RecoverSettings, params: dict[str, Tensor], optimizer: torch.optim.Optimizer,
          losses: list[float]) -> None:
    state = {"kind": "msp-recovery", "step": step, "settings": {k: getattr(settings, k) for k in RESUME_SETTINGS},
             "params": {n: p.detach().cpu() for n, p in params.items()},
             "optimizer": optimizer.state_dict(), "losses": list(losses)}
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def _resume(path: str | None, settings: RecoverSettings, params: dict[str, Tensor], optimizer: torch.optim.Optimizer,
            losses: list[float]) -> int:
    """Load a recovery checkpoint into the trained tensors and the optimizer; the step it reached."""
    if not path or not Path(path).exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("kind") != "msp-recovery":
        raise RecoveryError(f"{path} is not a recovery checkpoint: remove it or point "
                            f"{label(RecoverSettings, 'recover_checkpoint')} elsewhere")
    saved = state.get("settings", {})
    changed = [k for k in RESUME_SETTINGS if k in saved and saved[k] != getattr(settings, k)]
    if changed:
        was = ", ".join(f"{label(RecoverSettings, k)} {saved[k]!r}" for k in changed)
        raise RecoveryError(f"{path} was written with other recovery settings ({was}): resume with the same ones, or "
                            "remove the checkpoint to start over")
    if state["step"] > settings.recover_steps:
        steps = label(RecoverSettings, "recover_steps")
        raise RecoveryError(f"{path} is at step {state['step']}, beyond {steps} {settings.recover_steps}: raise it or "
                            "remove the checkpoint")
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    if {n: tuple(t.shape) for n, t in state["params"].items()} != shapes:
        raise RecoveryError(f"{path} was saved for other trained tensors (another model, recover_method or LoRA rank): "
                            "remove it to start over")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state["params"][name])
    optimizer.load_state_dict(state["optimizer"])
    losses[:] = state["losses"]
    log.info("recovery resumed from %s at step %d", path, state["step"])
    return int(state["step"])
