"""The framework-free engine behind both callbacks: calibration from any dataloader, plan, prune.

`MSPEngine` holds the settings (`MSPConfig`) and the plan once made. The Lightning and Hugging
Face callbacks only decide *when* to call it and where the model and data come from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..allocation import make_plan
from ..block_walk import CalibrationError
from ..config import MSPConfig, ReconstructSettings, RecoverSettings, SearchSettings, extract
from ..distributed import broadcast, broadcast_masks, broadcast_parameters
from ..models import block_linears, find_blocks, fingerprint, input_device
from ..nm import NMPatternError, has_pruning_masks, install_mask, mask_of, masked_modules, remove_masks, to_out_in, zeros_per_group
from ..plan import PlanError, SparsityPlan, nm_string, parse_nm
from ..pruner import check_model_fits, prune
from ..reconstruct import reconstruct
from ..recover import recover, teacher_targets
from ..saving import forget_plan, plan_from_config, restore_masks
from ..units import UnitLayout, unit_of

log = logging.getLogger(__name__)

def input_ids_of(batch: Any) -> Tensor:
    """Token ids from a batch: a tensor, a mapping with ``input_ids``, or a tuple/list whose
    first item is the ids (as in a ``TensorDataset``)."""
    if isinstance(batch, Tensor):
        ids = batch
    elif isinstance(batch, Mapping) and "input_ids" in batch:
        ids = batch["input_ids"]
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        ids = batch[0]
    else:
        raise CalibrationError(
            f"cannot find token ids in a calibration batch of type {type(batch).__name__}: give tensors, "
            "dicts with 'input_ids', or (input_ids, ...) tuples"
        )
    return ids if ids.ndim == 2 else ids.reshape(1, -1)


def take_rows(batches: Iterable[Any], rows: int) -> list[Tensor]:
    """Up to ``rows`` token rows from the batches, kept as (B, T) tensors on the CPU (they are
    pickled to the other ranks: a pickled CUDA tensor unpickles on the sender's GPU)."""
    taken: list[Tensor] = []
    count = 0
    for batch in batches:
        ids = input_ids_of(batch).detach().cpu()[: rows - count].clone()
        taken.append(ids)
        count += ids.shape[0]
        if count >= rows:
            break
    return taken


def split_rows(batches: list[Tensor], rows: int) -> tuple[list[Tensor], list[Tensor]]:
    """(the first ``rows`` token rows, the rest), splitting a batch where the count falls."""
    head: list[Tensor] = []
    tail: list[Tensor] = []
    count = 0
    for batch in batches:
        take = max(0, min(batch.shape[0], rows - count))
        if take:
            head.append(batch[:take])
        if take < batch.shape[0]:
            tail.append(batch[take:])
        count += take
    return head, tail


def causal_lm_of(module: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside a wrapper (e.g. a LightningModule), or the module itself."""
    for candidate in module.modules():
        if hasattr(candidate, "config") and hasattr(candidate, "get_output_embeddings"):
            return candidate
    return module


def install_identity_masks(model: nn.Module) -> int:
    """Give every block linear an all-kept N:M mask, so the parametrizations exist before a data-
    parallel wrapper (DDP) takes the model: one installed later breaks its gradient sync. Pruning
    then updates the masks in place. Returns how many were installed."""
    count = 0
    for block in find_blocks(model):
        for module in block_linears(block).values():
            if mask_of(module) is None:
                install_mask(module, torch.ones_like(module.weight, dtype=torch.bool))
                count += 1
    return count


def align_optimizer_order(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Parametrizing a linear with a bias reorders its parameters (bias, then weight.original),
    so an optimizer built before pruning lists them in another order than one a resumed run
    builds, and its saved state would not fit. Sort every parameter group into the model's
    current order (the optimizer's moments are kept; they are keyed by parameter)."""
    position = {id(p): i for i, p in enumerate(model.parameters())}
    for group in optimizer.param_groups:
        group["params"].sort(key=lambda p: position.get(id(p), len(position)))


class MSPEngine:
    """Make a plan for a model from calibration batches and prune it in place."""

    def __init__(self, config: MSPConfig):
        self.config = config
        self.plan: SparsityPlan | None = None

    def check_model(self, model: nn.Module) -> None:
        """Fail early, with the fix, on a model this configuration cannot prune."""
        find_blocks(model)
        check_model_fits(model, parse_nm(self.config.sparsity)[1])

    def restore_recorded_masks(self, model: nn.Module) -> bool:
        """A model loaded from an ordinary save of a pruned model (``from_pretrained``: weights with
        zeros and the plan in ``config.msp_sparsity``, but no masks): install its masks again, so
        that it trains on sparse and is not pruned a second time. A recorded plan the weights no
        longer follow (trained dense after baking, or a new model built from a pruned config) is
        dropped with a warning; one of another target than the callback's is refused."""
        found = plan_from_config(model)
        if found is None or next(masked_modules(model), None) is not None:
            return False
        plan, removed = found
        try:
            count = restore_masks(model, plan, removed)
        except (NMPatternError, PlanError) as error:
            remove_masks(model, bake=True)  # masks taken from zeros: baking changes no weight
            forget_plan(model)
            log.warning("config.msp_sparsity records a plan these weights do not follow (%s): ignoring it", error)
            return False
        self.check_target(plan, "config.msp_sparsity")
        self.plan = plan
        log.info("re-installed %d N:M masks from the plan in the model's config: %s", count, plan.describe())
        return True

    def check_target(self, plan: SparsityPlan, source: str) -> None:
        """Refuse a plan (found in ``source``) of another target than this configuration's."""
        n, m = parse_nm(self.config.sparsity)
        if (plan.target, plan.m) != (n, m):
            raise PlanError(
                f"the model was pruned to {nm_string(plan.target, plan.m)} ({source}) but the callback asks for "
                f"sparsity {self.config.sparsity!r}: set sparsity='{plan.target}:{plan.m}' to train it on, or start "
                "from the dense model to prune it again"
            )

    def adopt_or_refuse(self, model: nn.Module) -> SparsityPlan | None:
        """At the start of training: the plan of the masks already installed (a resumed or reloaded
        model), or None for a model still to prune; masks of another target are refused now,
        not after training."""
        plan = self.adopt_installed_masks(model)
        if plan is None:
            self._refuse_installed_masks(model)
        return plan

    def _refuse_installed_masks(self, model: nn.Module) -> None:
        if has_pruning_masks(model):
            raise PlanError(
                f"the model already carries N:M masks that do not match sparsity {self.config.sparsity} on every "
                "block: it was pruned before (e.g. loaded from a pruned checkpoint); remove them with "
                "msp_callback.nm.remove_masks(model) to prune again, or set sparsity to the masks' target"
            )

    def adopt_installed_masks(self, model: nn.Module) -> SparsityPlan | None:
        """If every block linear of ``model`` already carries an N:M mask (e.g. installed while a
        checkpoint loaded), read the plan from the masks instead of pruning again."""
        n, m = parse_nm(self.config.sparsity)
        layout = UnitLayout.of_model(model, self.config.granularity)
        levels: list[int] = []
        for block in find_blocks(model):
            units: dict[str, set[int]] = {}
            for name, module in block_linears(block).items():
                mask = mask_of(module)
                if mask is None:
                    return None
                zeros = zeros_per_group(to_out_in(module, mask), m)
                units.setdefault(unit_of(layout.granularity, name), set()).update(int(v) for v in zeros.unique())
            if any(len(found) != 1 for found in units.values()):
                return None
            levels += [units[name].pop() for name in layout.names]
        if layout.spent(levels) != layout.budget(n):  # e.g. the all-kept masks of install_identity_masks
            return None
        self.plan = SparsityPlan.for_units(layout, n, m, levels, criterion=self.config.criterion,
                                           allocation=self.config.allocation, fingerprint=fingerprint(model),
                                           metadata={"config": asdict(self.config), "source": "masks already installed"})
        log.info("the model already carries N:M masks (a resumed checkpoint): %s", self.plan.describe())
        return self.plan

    def _recovery_batches(self, rows: list[Tensor], extra: list[Tensor]) -> list[Tensor]:
        """Recovery batches of ``recover_batch_size`` rows: the ``extra`` rows (after the calibration
        and fitness ones), or the calibration rows again when the data has no more."""
        cfg = self.config
        flat = [row for batch in rows for row in batch.split(1)]
        rest = [row for batch in extra for row in batch.split(1)]
        if not rest:
            log.warning("the calibration data has no rows beyond the calibration and fitness ones: recovery trains on "
                        "the calibration rows (give more data, or calibration=... with more rows)")
            rest = flat[: cfg.calib_samples]
        lengths = {row.shape[1] for row in rest}
        size = cfg.recover_batch_size if len(lengths) == 1 else 1  # rows of different lengths go one at a time
        return [torch.cat(rest[i : i + size]) for i in range(0, len(rest), size)]

    def compress(self, model: nn.Module, batches: Iterable[Any], progress: bool = True) -> SparsityPlan:
        """Plan (search if the allocation says so) and prune ``model``; masks stay installed."""
        cfg = self.config
        self.check_model(model)
        self._refuse_installed_masks(model)
        recovery_rows = cfg.window_count() if cfg.recover_steps else 0
        holdout_rows = cfg.reconstruct_holdout if cfg.reconstruct_epochs else 0
        device = input_device(model)
        taken = broadcast(take_rows(batches, cfg.calib_samples + cfg.fitness_samples + holdout_rows + recovery_rows),
                          device)  # rank 0's rows, everywhere
        rows, extra = split_rows(taken, cfg.calib_samples + cfg.fitness_samples)
        holdout, extra = split_rows(extra, holdout_rows)
        if holdout_rows and not holdout:
            log.warning("the calibration data has no rows for reconstruction's held-out windows: every block keeps its "
                        "last epoch (give more data, or reconstruct_holdout=0 to silence this)")
        total = sum(r.shape[0] for r in rows)
        if total == 0:
            raise CalibrationError("the calibration data gave no batches: pass a non-empty dataloader")
        flat = torch.cat(rows) if len({r.shape[1] for r in rows}) == 1 else None
        if flat is not None and total > cfg.calib_samples:
            calibration = list(flat[: cfg.calib_samples].split(8))
            fitness_windows = flat[cfg.calib_samples : cfg.calib_samples + cfg.fitness_samples] if cfg.fitness_samples else None
        else:
            calibration, fitness_windows = rows, None  # the search falls back to the calibration rows
            if cfg.allocation == "msp":
                log.warning("no rows left for a separate fitness split: the search scores on the calibration rows")
        n, m = parse_nm(cfg.sparsity)
        search = extract(cfg, SearchSettings)  # a callback's search resumes whenever its checkpoint exists
        search = replace(search, resume=search.resume or search.search_checkpoint is not None,
                         max_level=search.level_bound(n, m, reconstructing=cfg.reconstruct_epochs > 0))
        was_training = model.training
        # Lightning runs some hooks under inference mode; masks made there could not be trained.
        with torch.inference_mode(False), torch.enable_grad():
            model.eval()
            try:
                plan = make_plan(cfg.allocation, model, n, m, cfg.criterion, calibration=calibration,
                                 fitness_windows=fitness_windows, search=search, seed=cfg.seed, progress=progress)
                plan.metadata["config"] = asdict(cfg)
                recovery = self._recovery_batches(rows, extra) if cfg.recover_steps else None
                teacher = (teacher_targets(model, recovery, cfg.recover_top_k, progress=progress)
                           if recovery and cfg.recover_loss == "kd" else None)  # the dense model, before pruning
                if cfg.reconstruct_epochs:  # resumes whenever its checkpoint folder holds finished blocks
                    reports = reconstruct(model, plan, calibration, extract(cfg, ReconstructSettings), holdout,
                                          resume=cfg.reconstruct_checkpoint is not None, seed=cfg.seed, progress=progress)
                    plan.metadata["reconstruction"] = [asdict(r) for r in reports]
                    broadcast_parameters(find_blocks(model))  # as after recovery: rank 0's trained blocks everywhere
                else:
                    prune(model, plan, calibration, progress=progress)
                broadcast_masks(model)
                if recovery:  # every rank trains on the same rows; rank 0's result is then everyone's
                    losses = recover(model, recovery, extract(cfg, RecoverSettings), teacher, progress=progress,
                                     seed=cfg.seed)
                    broadcast_parameters(find_blocks(model))  # GPU backward kernels are not bit-deterministic
                    plan.metadata["recovery"] = {"steps": len(losses), "first_loss": losses[0],
                                                 "last_loss": losses[-1]}
            finally:
                model.train(was_training)
        self.plan = broadcast(plan, device)
        log.info("pruned: %s", plan.describe())
        return plan
