"""`MSPCallback`: MSP for a Lightning `Trainer`, a thin adapter over `MSPEngine`."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl

from ..distributed import keep_masks_out_of_buffer_sync
from ..plan import SparsityPlan
from .callback_base import MSPSettingsMixin, check_strategy, register_mask_loader
from .engine import align_optimizer_order, causal_lm_of, install_identity_masks

log = logging.getLogger(__name__)


class MSPCallback(MSPSettingsMixin, pl.Callback):
    """Prune the LightningModule's causal LM to mixed N:M sparsity at the end of ``fit`` (or at
    its start, or on demand with `compress`). Masks are parametrizations, so later training,
    gradient clipping and checkpoints keep the sparsity exact; the plan is saved in checkpoints.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_strategy(type(trainer.strategy).__name__)
        self.engine.check_model(causal_lm_of(pl_module))
        register_mask_loader(pl_module, self.engine.config.sparsity)  # resuming a pruned checkpoint
        self.engine.restore_recorded_masks(causal_lm_of(pl_module))  # a pruned model loaded plainly
        if trainer.world_size > 1:
            if install_identity_masks(causal_lm_of(pl_module)):
                log.info("installed all-kept masks before DDP wraps the model; pruning fills them in place")
            keep_masks_out_of_buffer_sync(pl_module)  # the module Lightning's DDP wraps

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.plan is None and self.engine.adopt_or_refuse(causal_lm_of(pl_module)) is None and self.when == "fit_start":
            self.compress(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # "fit_end" work runs here: Lightning's strategy teardown (model to the CPU, DDP unwrapped)
        # comes after on_train_end and before on_fit_end, so only here is the model still on its device
        if self.when == "fit_end" and self.plan is None:
            self.compress(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.when == "fit_end" and self.plan is None:  # the training loop was skipped (nothing left to train)
            log.warning("training was skipped, so MSP prunes after Lightning's teardown, on the model as it is now "
                        "(on the CPU after a GPU run): prune with when='manual' and compress(...) to choose the device")
            self.compress(trainer, pl_module)

    def compress(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> SparsityPlan:
        """Prune now, calibrating on ``calibration`` or the trainer's train dataloader."""
        batches = self.calibration
        if batches is None:
            batches = trainer.train_dataloader
            if batches is None:
                trainer.fit_loop.setup_data()
                batches = trainer.train_dataloader
        if batches is None:
            raise ValueError("MSPCallback has no calibration data: pass calibration=... or give the trainer a train dataloader")
        plan = self.engine.compress(causal_lm_of(pl_module), batches, progress=self.progress)
        for optimizer in trainer.optimizers:  # so that a resumed run's optimizer state fits
            align_optimizer_order(optimizer, pl_module)
        return plan

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict() if self.plan else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("plan"):
            plan = SparsityPlan.from_dict(state_dict["plan"])
            self.engine.check_target(plan, "the checkpoint's callback state")
            self.engine.plan = plan
