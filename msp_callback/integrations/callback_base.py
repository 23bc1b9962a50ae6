"""The constructor both callbacks share, so they take exactly the same arguments."""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Iterable
from typing import Any, Literal

from torch import nn

from ..config import ConfigError, MSPConfig, keyword_signature, refuse_unknown, suggest
from ..plan import parse_nm
from ..saving import install_masks_for_checkpoint
from .engine import MSPEngine, causal_lm_of

log = logging.getLogger(__name__)

When = Literal["fit_end", "fit_start", "manual"]


SHARDED = ("FSDP", "DeepSpeed", "ModelParallel")


def check_strategy(name: str) -> None:
    """Stop at setup under weight sharding, naming what works."""
    if any(key.lower() in name.lower() for key in SHARDED):
        raise RuntimeError(
            f"MSP does not support sharded weights ({name}): masks and Fisher traces need whole weights on "
            "every rank. Supported: a single device, or data parallel (DDP, ddp_spawn; Accelerate "
            "multi-GPU without FSDP/DeepSpeed). For a model larger than one device, prune it first with "
            "`msp prune --offload disk` (blocks come onto the device one at a time), save it, and finetune "
            "the saved model."
        )


def _install_checkpoint_masks(module: nn.Module, state_dict, prefix: str, *args: Any) -> None:
    model = causal_lm_of(module)
    install_masks_for_checkpoint(model, state_dict, module._msp_mask_loader_m, prefix + _relative_name(module, model))


def _relative_name(root: nn.Module, inner: nn.Module) -> str:
    """``"model."`` for a causal LM held as ``root.model``; ``""`` when it is ``root`` itself."""
    name = next(name for name, module in root.named_modules() if module is inner)
    return f"{name}." if name else ""


def register_mask_loader(module: nn.Module, sparsity: str) -> None:
    """Make ``module.load_state_dict`` install the N:M masks a pruned checkpoint implies before
    its weights load (see `saving.install_masks_for_checkpoint`), so resuming into a fresh model
    keeps the sparsity, and the optimizer is built on the masked layers. Idempotent."""
    module._msp_mask_loader_m = parse_nm(sparsity)[1]
    if not getattr(module, "_msp_mask_loader", False):
        module.register_load_state_dict_pre_hook(_install_checkpoint_masks)
        module._msp_mask_loader = True


class MSPSettingsMixin:
    """Holds an `MSPEngine` built from keyword arguments: every field of `config.MSPConfig`
    (sparsity, criterion, allocation, calibration sizes, seed and the search's settings) plus
    ``when``, ``calibration`` and ``progress``. The signature is generated from the configuration,
    so LightningCLI / YAML, ``help()`` and IDEs see every option with its default."""

    def __init__(self, *, when: When = "fit_end", calibration: Iterable[Any] | None = None, progress: bool = True,
                 **settings: Any):
        """
        Args:
            when: "fit_end" (post-training, default), "fit_start" (prune, then train sparse), or
                "manual" (call ``compress`` yourself).
            calibration: batches to calibrate on; default: the trainer's train dataloader.
            progress: progress bars.
            **settings: the fields of `msp_callback.config.MSPConfig` (see ``msp prune --help``
                for each one's meaning); ``search_checkpoint`` is resumed from whenever it exists.
        """
        super().__init__()
        if when not in ("fit_end", "fit_start", "manual"):
            raise ConfigError(f"when must be 'fit_end', 'fit_start' or 'manual', got {when!r}{suggest(str(when), WHEN)}")
        refuse_unknown(MSPConfig, settings, type(self).__name__)
        self.when = when
        self.calibration = calibration
        self.progress = progress
        self.engine = MSPEngine(MSPConfig(**settings))

    @property
    def plan(self):
        return self.engine.plan


WHEN = ("fit_end", "fit_start", "manual")
_EXTRA = [inspect.Parameter("when", inspect.Parameter.KEYWORD_ONLY, default="fit_end", annotation=When),
          inspect.Parameter("calibration", inspect.Parameter.KEYWORD_ONLY, default=None,
                            annotation=typing.Optional[Iterable[Any]]),
          inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=bool)]
MSPSettingsMixin.__init__.__signature__ = keyword_signature(
    MSPConfig, [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)], _EXTRA)
