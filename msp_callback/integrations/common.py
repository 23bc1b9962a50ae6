"""The constructor both callbacks share, so they take exactly the same arguments."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

from torch import nn

from ..engine import MSPConfig, MSPEngine, causal_lm_of
from ..plan import parse_nm
from ..saving import install_masks_for_checkpoint

log = logging.getLogger(__name__)

When = Literal["fit_end", "fit_start", "manual"]


SHARDED = ("FSDP", "DeepSpeed", "ModelParallel")


def check_strategy(name: str) -> None:
    """Stop at setup under weight sharding, naming what works."""
    if any(key.lower() in name.lower() for key in SHARDED):
        raise RuntimeError(
            f"MSP does not support sharded weights ({name}): masks and Fisher traces need whole weights on "
            "every rank. Supported: a single device, or data parallel (DDP, ddp_spawn; Accelerate "
            "multi-GPU without FSDP/DeepSpeed)."
        )


def _install_checkpoint_masks(module: nn.Module, state_dict, prefix: str, *args: Any) -> None:
    install_masks_for_checkpoint(causal_lm_of(module), state_dict, module._msp_mask_loader_m,
                                 prefix + _relative_name(module, causal_lm_of(module)))


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
    """Holds an `MSPEngine` built from plain typed arguments (LightningCLI / YAML friendly)."""

    def __init__(
        self,
        sparsity: str = "3:4",
        criterion: str = "wanda",
        allocation: str = "msp",
        when: When = "fit_end",
        calib_samples: int = 16,
        fitness_samples: int = 4,
        population: int = 20,
        generations: int = 20,
        mutation_rate: float = 0.5,
        init: str = "sensitivity",
        fitness: str = "ppl",
        screen_windows: int = 0,
        seed: int = 0,
        search_checkpoint: str | None = None,
        calibration: Iterable[Any] | None = None,
        progress: bool = True,
    ):
        """
        Args:
            sparsity: target N:M, N pruned of every M ("3:4" = 75%).
            criterion: magnitude | wanda | sparsegpt | a registered name.
            allocation: uniform | owl | fisher | msp (the search).
            when: "fit_end" (post-training, default), "fit_start" (prune, then train sparse), or
                "manual" (call ``compress`` yourself).
            calib_samples / fitness_samples: token rows for calibration and for the search's fitness.
            calibration: batches to calibrate on; default: the trainer's train dataloader.
            screen_windows: multi-fidelity search: new individuals are first scored on this many
                fitness rows and only the better half on all of them (0: off).
            search_checkpoint: JSON file the search writes every generation and resumes from.
        """
        super().__init__()
        if when not in ("fit_end", "fit_start", "manual"):
            raise ValueError(f"when must be 'fit_end', 'fit_start' or 'manual', got {when!r}")
        self.when = when
        self.calibration = calibration
        self.progress = progress
        self.engine = MSPEngine(MSPConfig(
            sparsity=sparsity, criterion=criterion, allocation=allocation, calib_samples=calib_samples,
            fitness_samples=fitness_samples, population=population, generations=generations,
            mutation_rate=mutation_rate, init=init, fitness=fitness, screen_windows=screen_windows, seed=seed, search_checkpoint=search_checkpoint,
        ))

    @property
    def plan(self):
        return self.engine.plan
