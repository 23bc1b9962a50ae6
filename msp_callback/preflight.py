"""Checks of everything a job touches outside its settings, before the model loads.

The settings themselves are checked by `config.check` when they are built; here are the files and
folders they name: the model folder, the corpora, a plan to apply, a search checkpoint to resume,
and the places the results go. Each failure names the option or file and how to fix it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .config import ConfigError, flag, ignored_settings, label, runs_search
from .export import ExportError, check_replaceable
from .model_source import check_model_source
from .plan import PlanError, SparsityPlan, nm_string, parse_nm
from .semistructured import SemiStructuredError

log = logging.getLogger(__name__)

# What the command line reports in one line with exit status 2 (anything else is a bug).
USER_ERRORS = (ValueError, OSError, ExportError, SemiStructuredError)

RUN_FILES = ("plan.json", "search_checkpoint.json", "reconstruct_checkpoint", "recovery_checkpoint.pt",
             "result.json", "history.json", "levels.png", "convergence.png", "model")
MODEL_FOLDER = "model"  # where a job saves its model inside its output folder


def check_corpus(option: str, name: str) -> None:
    from .packaged import PACKAGED_TEXT

    if name in PACKAGED_TEXT or name in ("wikitext2", "c4-hub"):
        return
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"{option} {name}: not a packaged corpus ({', '.join(sorted(PACKAGED_TEXT))}), a hub corpus "
                          "(wikitext2, c4-hub) or an existing text file")
    if not path.read_text(encoding="utf-8", errors="replace").strip():
        raise ConfigError(f"{option} {name}: the text file is empty")


def read_plan_file(path: str) -> SparsityPlan:
    try:
        return SparsityPlan.load(path)
    except PlanError as error:
        raise PlanError(f"--plan {path}: {error}") from None


def check_output_folder(option: str, folder: str | os.PathLike) -> None:
    """A folder the job may write into: new, empty, or an earlier run's; never a file or a
    folder holding other things; inside something writable."""
    path = Path(folder)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{option} {folder}: is a file; give a folder for the run's outputs")
        entries = {p.name for p in path.iterdir()}
        if entries and not entries & set(RUN_FILES):
            raise ConfigError(f"{option} {folder}: the folder holds other files ({', '.join(sorted(entries)[:3])}...); "
                              "give a new folder or an earlier run's")
    _check_writable(option, path)


def check_model_folder(folder: Path) -> None:
    """The job's model folder is new, or a model an earlier run saved there (replaced once the new
    one is complete)."""
    try:
        if folder.exists() and not folder.is_dir():
            raise ExportError(f"{folder} is a file")
        check_replaceable(folder)
    except ExportError as error:
        raise ConfigError(f"--output {folder.parent}: {error}; or add --save-model none") from None


def check_output_file(option: str, file: str | os.PathLike) -> None:
    path = Path(file)
    if path.is_dir():
        raise ConfigError(f"{option} {file}: is a folder; give a file name")
    _check_writable(option, path.parent)


def _check_writable(option: str, path: Path) -> None:
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is a file, so nothing can be written below it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: {existing} is not writable")


def check_job(settings: Any, given: dict[str, Any], output: str | os.PathLike, unused: str = "refuse") -> None:
    """Everything a `job.PruneSettings` job names, before the model loads. ``given`` are the
    settings the user set explicitly: one the job would ignore is refused (``unused="refuse"``, the
    command line) or warned about (``"warn"``, recipes, which may describe more than one job)."""
    for name, why in ignored_settings(settings, given):
        if unused == "refuse":
            raise ConfigError(f"{flag(settings, name)} {why}")
        log.warning("%s %s; it is ignored", label(settings, name), why)
    check_model_source(settings.model)
    check_corpus("--calib-corpus", settings.calib_corpus)
    check_corpus("--eval-corpus", settings.eval_corpus)
    if settings.plan:
        plan = read_plan_file(settings.plan)
        if "sparsity" in given and parse_nm(settings.sparsity) != (plan.target, plan.m):
            raise ConfigError(f"--sparsity {settings.sparsity} contradicts --plan {settings.plan}, which is "
                              f"{nm_string(plan.target, plan.m)}: drop --sparsity (the plan decides)")
        if "allocation" in given:
            raise ConfigError("--allocation is not used with --plan (the plan's levels are applied): drop one of them")
    if settings.recover_steps and settings.recover_method == "sparse":
        import torch

        from .devices import resolve_device, resolve_dtype

        if resolve_dtype(settings.dtype, resolve_device(settings.device)) == torch.float16:
            raise ConfigError("--recover-method sparse does not train float16 weights (they need loss scaling): use "
                              "--dtype bf16 or float32, or --recover-method lora")
    if settings.recover_steps and settings.offload == "disk":
        raise ConfigError("recovery (--recover-steps) cannot train a model offloaded to disk (not built yet): drop "
                          "--offload disk, or recover in a separate run on a machine that holds the model")
    if settings.compare_uniform:
        if not settings.plan and settings.allocation == "uniform":
            raise ConfigError("--compare-uniform with --allocation uniform compares uniform with itself: drop it")
    searches = runs_search(settings)
    if settings.resume:
        if not searches and not settings.recover_steps and not settings.reconstruct_epochs:
            raise ConfigError("--resume continues an MSP search (--allocation msp, no --plan), a reconstruction "
                              "(--reconstruct-epochs) or a recovery (--recover-steps): this job has none")
    if settings.resume and searches:
        checkpoint = Path(settings.search_checkpoint)
        if not checkpoint.is_file():
            raise ConfigError(f"--resume: there is no search checkpoint at {checkpoint} (a search writes one every "
                              "generation); drop --resume to start a new search, or give the earlier run's --output")
        try:
            json.loads(checkpoint.read_text())
        except ValueError as error:
            raise ConfigError(f"--resume: the search checkpoint {checkpoint} is damaged ({error}); delete it and "
                              "drop --resume to start again") from None
    if settings.offload_folder:
        if Path(settings.offload_folder).is_file():
            raise ConfigError(f"--offload-folder {settings.offload_folder}: is a file; give a folder (the job makes "
                              "its own subfolder there and deletes it afterwards)")
        if settings.offload != "disk":
            raise ConfigError("--offload-folder is only used with --offload disk: add --offload disk or drop it")
        _check_writable("--offload-folder", Path(settings.offload_folder))
    check_output_folder("--output", output)
    if settings.save_model != "none":
        check_model_folder(Path(output) / MODEL_FOLDER)
    if settings.json:
        check_output_file("--json", settings.json)
