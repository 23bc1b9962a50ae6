"""One end-to-end pruning job: load, sample data, plan, prune (reconstruct, recover), evaluate, save.

This is what ``msp prune`` runs; it strings the framework-free pieces together and returns a
JSON-ready result. Calibration text and evaluation text never overlap. Whatever stages run, the
job ends by saving the model they made (`save_final_model`) into ``<output>/model``.
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
    ReconstructSettings,
    RecoverSettings,
    SearchSettings,
    TargetSettings,
    check,
    extract,
    label,
    option,
)
from .devices import resolve_device, resolve_dtype
from .evaluate import perplexity
from .export import folder_bytes, save_pruned
from .loading import load_causal_lm
from .models import input_device, measure_sparsity, named_block_linears
from .nm import remove_masks, stored_weight
from .offload import offload_of, release
from .plan import SparsityPlan, nm_string, parse_nm
from .preflight import MODEL_FOLDER
from .pruner import prune
from .reconstruct import RESUME_SETTINGS, reconstruct
from .recover import TeacherTargets, recover, teacher_targets
from .samples import Samples
from .saving import forget_plan
from .search.runner import search_summary
from .storage import TensorStore

log = logging.getLogger(__name__)


@dataclass
class PruneSettings(OutputSettings, RecoverSettings, ReconstructSettings, SearchSettings, DeviceSettings, DataSettings, CalibrationSettings,
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


# what drew the calibration and fitness windows: a resumed search refuses other values, naming them
DATA_SETTINGS = ("calib_corpus", "calib_samples", "calib_seqlen", "fitness_samples", "fitness_seqlen", "bos")


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
    fitness_windows: torch.Tensor | None  # (fitness_samples, fitness_seqlen), calibration corpus, other seed; None for 0
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
    calibration = _calibration_windows(settings, calib_tokens, "calib_samples", "calib_seqlen", settings.seed, bos_id)
    fitness_windows = None  # none asked for: the search scores plans on the calibration rows, as the callbacks' does
    if settings.fitness_samples:
        fitness_windows = torch.cat(_calibration_windows(settings, calib_tokens, "fitness_samples", "fitness_seqlen",
                                                         settings.seed + 1, bos_id))
    elif settings.allocation == "msp" and not settings.plan:
        log.warning("--fitness-samples 0: the search scores plans on the calibration rows it prunes with")
    windows = data.evaluation_windows(eval_tokens, settings.eval_seqlen, settings.eval_windows, bos_id,
                                      what=f"the evaluation text ({settings.eval_corpus})",
                                      option=label(settings, "eval_seqlen"))
    log.info("calibration: %d x %d tokens of %s; evaluation: %d x %d tokens of %s",
             settings.calib_samples, settings.calib_seqlen, settings.calib_corpus, windows.shape[0], windows.shape[1], settings.eval_corpus)
    return Inputs(model, tokenizer, calibration, fitness_windows, windows, calib_tokens, bos_id)


def _calibration_windows(settings: PruneSettings, tokens: torch.Tensor, count: str, seqlen: str, seed: int,
                         bos_id: int | None, batch_size: int = 8) -> list[torch.Tensor]:
    """Windows of the calibration text, ``count`` and ``seqlen`` named by their settings (whose
    values they are, and what an error names)."""
    number = settings.window_count() if count == "recover_steps" else getattr(settings, count)
    return data.sample_calibration(tokens, number, getattr(settings, seqlen), seed, bos_id, batch_size,
                                   what=f"the calibration text ({settings.calib_corpus})",
                                   options=(label(settings, count), label(settings, seqlen)))


def run_prune(settings: PruneSettings) -> tuple[dict[str, Any], SparsityPlan]:
    """Run the job and save its final model (unless ``save_model`` is none or there is no
    ``output``); returns (result dict, plan). The model is discarded afterwards."""
    result, plan, inputs = prune_and_measure(settings)
    try:
        if settings.output and settings.save_model != "none":
            saved = save_final_model(inputs.model, inputs.tokenizer, plan, Path(settings.output) / MODEL_FOLDER,
                                     settings.save_model)
            result["saved_model"] = saved
            result["seconds"] += saved["seconds"]
    finally:
        release(inputs.model)
    return result, plan


def save_final_model(model: torch.nn.Module, tokenizer: Any, plan: SparsityPlan, folder: str | Path,
                     format: str) -> dict[str, Any]:
    """Save the job's model as it is at the end, after every stage that ran, with the tokenizer
    (`export.save_pruned`: written whole or not at all; an earlier run's model there is replaced).
    Every block is kept, level-M ones too, so the folder holds exactly the model the job measured:
    ``format="plain"`` loads with plain ``AutoModelForCausalLM.from_pretrained``, ``"compact"``
    with `export.load_pruned`. Returns where, in what form and how large (bytes of all its files)."""
    started = time.perf_counter()
    folder = Path(folder)
    record = save_pruned(model, folder, plan, tokenizer, drop_pruned_blocks=False, overwrite=True, format=format)
    saved = {"folder": str(folder), "format": format, "bytes": folder_bytes(folder),
             "parameters": record.parameters_after, "seconds": time.perf_counter() - started}
    how = "AutoModelForCausalLM.from_pretrained" if format == "plain" else "msp_callback.export.load_pruned"
    log.info("saved the model to %s (%s, %.1f MB): load it with %s(%r)", folder, format, saved["bytes"] / 1e6, how,
             str(folder))
    return saved


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
    samples = Samples(inputs.tokenizer, inputs.bos_id, model)
    samples.take("dense", model)

    if settings.plan:
        plan = SparsityPlan.load(settings.plan)
        plan.criterion = settings.criterion
    else:
        search = extract(settings, SearchSettings)
        search.max_level = search.level_bound(n, m, reconstructing=settings.reconstruct_epochs > 0)
        if settings.offload == "disk" and search.cache_storage == "auto":
            search.cache_storage = "disk"  # the level cache follows the weights out of memory
        plan = make_plan(settings.allocation, model, n, m, settings.criterion, calibration=calibration,
                         fitness_windows=inputs.fitness_windows, search=search, seed=settings.seed,
                         progress=settings.progress, data_settings={k: getattr(settings, k) for k in DATA_SETTINGS},
                         **settings.extra)
    plan.metadata.update(settings=asdict(settings))

    uniform_ppl = _uniform_beside(settings, inputs, plan, ppl) if settings.compare_uniform else None
    recovery, teacher = recovery_inputs(settings, inputs)  # the teacher is the dense model: before pruning
    t0 = time.perf_counter()
    reconstruction = _prune(settings, inputs, plan)
    prune_seconds = time.perf_counter() - t0
    pruned_ppl = ppl("pruned perplexity")
    stats = measure_sparsity(model)
    log.info("pruned perplexity at %s (%s, %s%s): %.3f", nm_string(n, m), settings.criterion, plan.allocation,
             ", reconstructed" if reconstruction else "", pruned_ppl)
    samples.take("reconstructed" if reconstruction else "pruned", model)
    recovered = _recover(settings, inputs, recovery, teacher, ppl) if recovery else None
    if recovered:
        samples.take("recovered", model)
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
        **({"reconstruction": reconstruction} if reconstruction else {}),
        **({"recovery": recovered} if recovered else {}),
        **samples.result(),
        "device": str(input_device(model)),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    result["seconds"] = time.perf_counter() - start
    return result, plan, inputs


def _prune(settings: PruneSettings, inputs: Inputs, plan: SparsityPlan) -> dict[str, Any] | None:
    """Prune to ``plan``, with block-wise reconstruction when asked; the reconstruction's summary
    (per-block losses) or None."""
    if not settings.reconstruct_epochs:
        prune(inputs.model, plan, inputs.calibration, progress=settings.progress)
        return None
    holdout = (_calibration_windows(settings, inputs.calib_tokens, "reconstruct_holdout", "calib_seqlen", settings.seed + 3,
                                    inputs.bos_id) if settings.reconstruct_holdout else [])
    t0 = time.perf_counter()
    reports = reconstruct(inputs.model, plan, inputs.calibration, extract(settings, ReconstructSettings), holdout,
                          resume=settings.resume, seed=settings.seed, progress=settings.progress)
    return {**{k: getattr(settings, k) for k in RESUME_SETTINGS}, "seconds": time.perf_counter() - t0,
            "blocks": [asdict(r) for r in reports]}


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
    recovery = _calibration_windows(settings, inputs.calib_tokens,
                                    "recover_windows" if settings.recover_windows else "recover_steps", "recover_seqlen",
                                    settings.seed + 2, inputs.bos_id, settings.recover_batch_size)
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
