"""One end-to-end pruning job: load, sample data, plan, prune, evaluate, report.

This is what ``msp prune`` runs; it strings the framework-free pieces together and returns a
JSON-ready result. Calibration text and evaluation text never overlap.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import data
from .allocation import make_plan
from .atomic_files import atomic_write_text
from .config import (
    CalibrationSettings,
    DataSettings,
    DeviceSettings,
    OutputSettings,
    RecoverSettings,
    SearchSettings,
    TargetSettings,
    check,
    extract,
    option,
)
from .devices import resolve_device, resolve_dtype
from .evaluate import perplexity
from .models import input_device, load_causal_lm, measure_sparsity, named_block_linears
from .nm import remove_masks, stored_weight
from .offload import offload_of, release
from .plan import SparsityPlan, nm_string, parse_nm
from .pruner import prune
from .recover import TeacherTargets, recover, teacher_targets
from .saving import forget_plan
from .search.runner import search_summary
from .storage import TensorStore

log = logging.getLogger(__name__)


@dataclass
class PruneSettings(OutputSettings, RecoverSettings, SearchSettings, DeviceSettings, DataSettings, CalibrationSettings,
                    TargetSettings):
    """Everything one pruning job needs (``msp prune``, recipes); defaults are the embedded
    real-model run. Each setting is declared once, in its section in `config`."""

    model: str = option("smollm2-135m", "packaged name, local folder or hub id")
    plan: str | None = option(None, "apply this plan.json instead of making one")
    compare_uniform: bool = option(False, "also prune with uniform levels at the same target and report that "
                                   "perplexity beside (one more prune and evaluation, no recovery)")
    extra: dict[str, Any] = option(None, "allocation settings (search, ...)", cli=False, factory=dict)

    def __post_init__(self) -> None:
        check(self)
        if self.eval_windows == 0:
            self.eval_windows = None  # all of the text


def _bos_id(tokenizer, bos: str) -> int | None:
    if bos not in ("auto", "yes", "no"):
        raise ValueError(f"bos must be auto, yes or no, got {bos!r}")
    wanted = data.wants_bos(tokenizer) if bos == "auto" else bos == "yes"
    if wanted and tokenizer.bos_token_id is None:
        raise ValueError("--bos yes, but the tokenizer has no BOS token")
    return tokenizer.bos_token_id if wanted else None


def load_texts(settings: PruneSettings, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token streams for calibration and evaluation, disjoint even from one corpus."""
    calib_docs = data.load_corpus(settings.calib_corpus)
    if settings.eval_corpus == settings.calib_corpus:
        eval_docs = data.split_documents(calib_docs, "evaluation")
        calib_docs = data.split_documents(calib_docs, "calibration")
    else:
        eval_docs = data.load_corpus(settings.eval_corpus)
    return data.tokenize(tokenizer, calib_docs), data.tokenize(tokenizer, eval_docs)


@dataclass
class Inputs:
    """What a job prunes and measures with: the model and its three disjoint token sets."""

    model: torch.nn.Module
    tokenizer: Any
    calibration: list[torch.Tensor]  # batches (B, calib_seqlen)
    fitness_windows: torch.Tensor  # (fitness_samples, fitness_seqlen), calibration corpus, other seed
    windows: torch.Tensor  # (eval_windows, eval_seqlen), evaluation text
    calib_tokens: torch.Tensor | None = None  # the calibration corpus as one token stream
    bos_id: int | None = None  # BOS token starting each window, if any

    def dense_snapshot(self) -> Callable[[], None]:
        """Copy the block linears' weights now (all that pruning changes) off the device: into CPU
        memory, or files for an offloaded model, never a second model beside the first; the
        returned function removes the masks and restores them."""
        linears = named_block_linears(self.model)
        store = TensorStore("disk" if offload_of(self.model) is not None else "cpu", input_device(self.model),
                            label="dense snapshot")
        saved = {name: store.put(stored_weight(module)) for name, module in linears.items()}

        def restore() -> None:
            remove_masks(self.model, bake=False)
            with torch.no_grad():
                for name, module in linears.items():
                    module.weight.copy_(saved[name])
            forget_plan(self.model)  # dense again: a later save must not carry the plan

        return restore


def prepare(settings: PruneSettings, loaded: tuple[torch.nn.Module, Any] | None = None) -> Inputs:
    """Load the model (unless ``loaded`` gives ``(model, tokenizer)``) and sample calibration,
    fitness and evaluation tokens."""
    if loaded is None:
        device = resolve_device(settings.device)
        loaded = load_causal_lm(settings.model, dtype=resolve_dtype(settings.dtype, device), device=device,
                                offload=settings.offload, offload_folder=settings.offload_folder)
    model, tokenizer = loaded
    bos_id = _bos_id(tokenizer, settings.bos)
    calib_tokens, eval_tokens = load_texts(settings, tokenizer)
    calibration = data.sample_calibration(calib_tokens, settings.calib_samples, settings.calib_seqlen, settings.seed, bos_id)
    fitness_windows = torch.cat(data.sample_calibration(
        calib_tokens, settings.fitness_samples, settings.fitness_seqlen, settings.seed + 1, bos_id))
    windows = data.evaluation_windows(eval_tokens, settings.eval_seqlen, settings.eval_windows, bos_id)
    log.info("calibration: %d x %d tokens of %s; evaluation: %d x %d tokens of %s",
             settings.calib_samples, settings.calib_seqlen, settings.calib_corpus, windows.shape[0], windows.shape[1], settings.eval_corpus)
    return Inputs(model, tokenizer, calibration, fitness_windows, windows, calib_tokens, bos_id)


def run_prune(settings: PruneSettings) -> tuple[dict[str, Any], SparsityPlan]:
    """Run the job; returns (result dict, plan). The model is discarded afterwards."""
    result, plan, inputs = prune_and_measure(settings)
    release(inputs.model)
    return result, plan


def prune_and_measure(settings: PruneSettings) -> tuple[dict[str, Any], SparsityPlan, Inputs]:
    """Run the job; returns (result dict, plan, inputs with the pruned, masked model)."""
    start = time.perf_counter()
    inputs = prepare(settings)
    try:
        return _prune_and_measure(settings, inputs, start)
    except BaseException:
        release(inputs.model)  # an offloaded model's scratch folder goes with the failed job
        raise


def _prune_and_measure(settings: PruneSettings, inputs: Inputs, start: float) -> tuple[dict[str, Any], SparsityPlan, Inputs]:
    n, m = parse_nm(settings.sparsity)
    model, calibration, windows = inputs.model, inputs.calibration, inputs.windows

    def ppl(desc: str) -> float:
        return perplexity(model, windows, settings.eval_batch_size, progress=settings.progress, desc=desc)

    dense_ppl = ppl("dense perplexity") if settings.dense_eval else None
    if dense_ppl is not None:
        log.info("dense perplexity: %.3f", dense_ppl)

    if settings.plan:
        plan = SparsityPlan.load(settings.plan)
        plan.criterion = settings.criterion
    else:
        search = extract(settings, SearchSettings)
        if settings.offload == "disk" and search.cache_storage == "auto":
            search.cache_storage = "disk"  # the level cache follows the weights out of memory
        plan = make_plan(settings.allocation, model, n, m, settings.criterion, calibration=calibration,
                         fitness_windows=inputs.fitness_windows, search=search, seed=settings.seed,
                         progress=settings.progress, **settings.extra)
    plan.metadata.update(settings=asdict(settings))

    uniform_ppl = _uniform_beside(settings, inputs, plan, ppl) if settings.compare_uniform else None
    recovery, teacher = recovery_inputs(settings, inputs)  # the teacher is the dense model: before pruning
    t0 = time.perf_counter()
    prune(model, plan, calibration, progress=settings.progress)
    prune_seconds = time.perf_counter() - t0
    pruned_ppl = ppl("pruned perplexity")
    stats = measure_sparsity(model)
    log.info("pruned perplexity at %s (%s, %s): %.3f", nm_string(n, m), settings.criterion, plan.allocation, pruned_ppl)
    recovered = _recover(settings, inputs, recovery, teacher, ppl) if recovery else None
    result = {
        "model": settings.model,
        "criterion": plan.criterion,
        "allocation": plan.allocation,
        "sparsity": nm_string(plan.target, plan.m),
        "levels": plan.levels,
        **({"granularity": plan.granularity, "unit_names": plan.unit_names} if plan.granularity != "block" else {}),
        "dense_ppl": dense_ppl,
        "pruned_ppl": pruned_ppl,
        **({"uniform_ppl": uniform_ppl} if uniform_ppl is not None else {}),
        "measured_sparsity": stats.as_dict(),
        "eval_tokens": int(windows.numel()),
        "eval_corpus": settings.eval_corpus,
        "eval_windows": int(windows.shape[0]),
        "eval_seqlen": settings.eval_seqlen,
        "calib_corpus": settings.calib_corpus,
        "calib_samples": settings.calib_samples,
        "calib_seqlen": settings.calib_seqlen,
        "seed": settings.seed,
        "prune_seconds": prune_seconds,
        **search_summary(plan),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **({"recovery": recovered} if recovered else {}),
        "device": str(input_device(model)),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    result["seconds"] = time.perf_counter() - start
    return result, plan, inputs


def _uniform_beside(settings: PruneSettings, inputs: Inputs, plan: SparsityPlan, ppl: Callable[[str], float]) -> float:
    """Perplexity of the uniform plan at ``plan``'s target, leaving the model dense again."""
    restore = inputs.dense_snapshot()
    uniform = SparsityPlan.uniform(plan.target, plan.m, plan.num_blocks, criterion=plan.criterion)
    try:
        prune(inputs.model, uniform, inputs.calibration, progress=settings.progress)
        value = ppl("uniform perplexity")
    finally:
        restore()
    log.info("uniform %s perplexity (for comparison): %.3f", nm_string(plan.target, plan.m), value)
    return value


def recovery_inputs(settings: PruneSettings, inputs: Inputs) -> tuple[list[torch.Tensor] | None, TeacherTargets | None]:
    """Recovery windows (calibration text, their own seed) and, for distillation, the dense
    model's targets on them; (None, None) without a recovery stage."""
    if not settings.recover_steps:
        return None, None
    recovery = data.sample_calibration(inputs.calib_tokens, settings.window_count(), settings.recover_seqlen,
                                       settings.seed + 2, inputs.bos_id, batch_size=settings.recover_batch_size)
    if settings.recover_loss != "kd":
        return recovery, None
    return recovery, teacher_targets(inputs.model, recovery, settings.recover_top_k, progress=settings.progress)


def _recover(settings: PruneSettings, inputs: Inputs, recovery: list[torch.Tensor], teacher: TeacherTargets | None,
             ppl: Callable[[str], float]) -> dict[str, Any]:
    """The recovery stage on the pruned model, and its perplexity after."""
    recover_settings = extract(settings, RecoverSettings)
    checkpoint = settings.recover_checkpoint
    if checkpoint and not settings.resume:
        Path(checkpoint).unlink(missing_ok=True)  # a new job: an earlier run's recovery is not continued
    t0 = time.perf_counter()
    losses = recover(inputs.model, recovery, recover_settings, teacher, progress=settings.progress, seed=settings.seed)
    seconds = time.perf_counter() - t0
    recovered_ppl = ppl("recovered perplexity")
    log.info("perplexity after %d recovery steps: %.3f", len(losses), recovered_ppl)
    tokens = sum(recovery[step % len(recovery)].numel() for step in range(len(losses)))
    return {"recovered_ppl": recovered_ppl, "steps": len(losses), "steps_asked": settings.recover_steps,
            "max_minutes": settings.recover_max_minutes, "method": settings.recover_method,
            "loss": settings.recover_loss, "lr": settings.recover_lr, "train_tokens": tokens,
            "distinct_windows": sum(b.shape[0] for b in recovery), "seconds": seconds, "first_loss": losses[0],
            "last_loss": losses[-1], "losses": losses, "teacher_mb": teacher.nbytes / 2**20 if teacher else 0.0,
            "measured_sparsity_after": measure_sparsity(inputs.model).as_dict()}


def write_outputs(result: dict[str, Any], plan: SparsityPlan, output: str | Path | None, json_path: str | Path | None) -> None:
    """plan.json (and for a search: history.json, levels.png, convergence.png) in ``output``;
    the result as JSON at ``json_path``."""
    if output:
        output = Path(output)
        plan.save(output / "plan.json")
        from .plots import plot_convergence, plot_levels

        series = plan.levels_by_unit()
        plot_levels({plan.allocation if plan.granularity == "block" else f"{plan.allocation}: {name}": levels
                     for name, levels in series.items()}, plan.m, output / "levels.png")
        if "history" in plan.metadata:
            atomic_write_text(output / "history.json", json.dumps(plan.metadata["history"], indent=2))
            plot_convergence(plan.metadata["history"], output / "convergence.png")
        log.info("plan and plots written to %s", output)
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=2))
