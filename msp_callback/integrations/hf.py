"""`MSPTrainerCallback`: MSP for a Hugging Face `Trainer`, a thin adapter over `MSPEngine`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ..distributed import keep_masks_out_of_buffer_sync
from ..plan import SparsityPlan
from .callback_base import MSPSettingsMixin, check_strategy, register_mask_loader
from .engine import align_optimizer_order, causal_lm_of, install_identity_masks

log = logging.getLogger(__name__)


class MSPTrainerCallback(MSPSettingsMixin, TrainerCallback):
    """Prune the Trainer's model to mixed N:M sparsity at the end of training (or at its start,
    or on demand with `compress`); masks are parametrizations, so training keeps them exact."""

    def on_init_end(self, args, state, control, **kwargs: Any):
        check_strategy("FSDP" if getattr(args, "fsdp", None) else "DeepSpeed" if getattr(args, "deepspeed", None) else "")
        # An optimizer handed to the Trainer was built before any masks existed, here and in a
        # resumed run alike, so its order must stay; one the Trainer builds is aligned after pruning.
        self._optimizer_given = kwargs.get("optimizer") is not None
        self._init_seen = True
        model = kwargs.get("model")
        if model is not None:
            self.engine.check_model(causal_lm_of(model))
            register_mask_loader(model, self.engine.config.sparsity)  # resume_from_checkpoint of a pruned checkpoint
            self.engine.restore_recorded_masks(causal_lm_of(model))  # a pruned model loaded plainly
            if args.world_size > 1:  # before the Trainer wraps the model in DDP
                install_identity_masks(causal_lm_of(model))
                keep_masks_out_of_buffer_sync(model)

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, train_dataloader=None, **kwargs: Any):
        if not getattr(self, "_init_seen", False):
            message = ("MSPTrainerCallback was added after the Trainer was built (trainer.add_callback): pass it as "
                       "Trainer(callbacks=[...]) so its masks exist before DDP wraps the model and before a checkpoint loads")
            if args.world_size > 1:
                raise RuntimeError(message)
            log.warning("%s; fine for this single-process run unless it resumes a pruned checkpoint", message)
            self._init_seen = True
        if self.plan is None and self.engine.adopt_or_refuse(causal_lm_of(model)) is None and self.when == "fit_start":
            self.compress(model, train_dataloader, kwargs.get("optimizer"))

    def on_train_end(self, args, state, control, model: nn.Module | None = None, train_dataloader=None, **kwargs: Any):
        if self.when == "fit_end" and self.plan is None:
            self.compress(model, train_dataloader, kwargs.get("optimizer"))

    def compress(self, model: nn.Module, dataloader: Iterable[Any] | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> SparsityPlan:
        """Prune ``model`` now, calibrating on ``calibration`` or ``dataloader``; ``optimizer``
        (if training goes on) is re-ordered to match the masked model (see `align_optimizer_order`)."""
        batches = self.calibration if self.calibration is not None else dataloader
        if batches is None:
            raise ValueError("MSPTrainerCallback has no calibration data: pass calibration=... or train with a train_dataset")
        plan = self.engine.compress(causal_lm_of(model), batches, progress=self.progress)
        if optimizer is not None and not getattr(self, "_optimizer_given", False):
            align_optimizer_order(optimizer, model)
        return plan
