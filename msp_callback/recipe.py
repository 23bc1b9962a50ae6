"""Recipes: one YAML file describes a whole job, run with ``msp run RECIPE [--set key=value ...]``.

Top-level keys are the settings of ``msp prune`` (`job.PruneSettings`: model, sparsity,
criterion, allocation, data and search sizes); optional sections add stages after pruning:

    lora:     # sparsity-preserving LoRA finetune on calibration-corpus text, then merge
      rank: 16
      steps: 40
    export:   # save_pruned to a transformers folder (plan beside it), reload it plainly, measure
      folder: runs/smollm2-3of4/model

Every perplexity is measured on the same held-out windows: dense, pruned, after LoRA, after
merge, after plain reload. Overrides use dotted keys: ``--set lora.steps=10 sparsity=2:4``.

A recipe saves its final model once, at the end: through its ``export:`` section when it has one
(folder, format, block removal, and a reload that is measured), else as ``msp prune`` does
(``save_model``: plain by default, to ``<output>/model``, every block kept); setting both is refused.
"""

from __future__ import annotations

import logging
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, refuse_unknown
from .devices import resolve_device
from .job import PruneSettings, prune_and_measure, save_final_model, write_outputs
from .offload import release
from .preflight import MODEL_FOLDER, check_job
from .samples import Samples

log = logging.getLogger(__name__)


class RecipeError(ValueError):
    """A recipe file or override that does not describe a valid job."""


@dataclass
class LoraSettings:
    """Sparse LoRA finetune after pruning (see `lora.sparse_lora`)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: list[str] | None = None  # default: every linear of a decoder block
    steps: int = 40
    batch_size: int = 4
    seqlen: int = 256
    lr: float = 2e-4
    seed: int = 2  # training windows are drawn with this seed (calibration uses `seed`)


@dataclass
class ExportSettings:
    """Export after pruning (and merging): see `export.save_pruned`."""

    folder: str | None = None  # default: <output>/model
    drop_pruned_blocks: bool = True
    overwrite: bool = False
    packed_2of4: bool = False  # also write the 2:4-fitting layers packed (semistructured.save_packed_2of4)
    format: str = "plain"  # or compact: kept values plus packed positions, read back with export.load_pruned


@dataclass
class Recipe:
    prune: PruneSettings
    lora: LoraSettings | None = None
    export: ExportSettings | None = None
    output: str | None = None  # default: runs/<recipe file stem>
    source: dict[str, Any] = field(default_factory=dict)
    given: dict[str, Any] = field(default_factory=dict)  # the prune settings the recipe sets


SECTIONS = {"lora": LoraSettings, "export": ExportSettings}


class _Raw(str):
    """A command-line override value: read as YAML only for non-text fields (so 2:4 stays text)."""


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not KEY=VALUE (e.g. --set sparsity=2:4 or --set lora.steps=10)")
    key, value = text.split("=", 1)
    return key.strip().split("."), _Raw(value.strip())


def _yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"{where}: not valid YAML: {error}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Give a value its field's type: text stays text (YAML would read an unquoted 3:4 as the
    base-60 number 184), and numbers written as text (YAML reads ``1e-3`` as text) become numbers."""
    types = [t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)]
    if isinstance(value, _Raw):
        if str in types:
            return str(value)
        value = _yaml(value, where)
    if value is None:
        return None
    if str in types:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected text, got {value!r}; quote it in YAML (e.g. sparsity: '3:4')")
        return value
    kind = next((t for t in (bool, int, float) if t in types), None)
    if kind is None:
        return value  # lists, dicts: as read
    if isinstance(value, bool) or kind is bool:
        if isinstance(value, bool) and kind is bool:
            return value
    elif isinstance(value, (str, int, float)):
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is not None and not (isinstance(value, float) and number != value):
            return number
    raise RecipeError(f"{where}: expected {kind.__name__}, got {value!r}")


RENAMED = {"checkpoint": "search_checkpoint"}  # earlier recipe keys that still work


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    values = {RENAMED.get(k, k) if cls is PruneSettings else k: v for k, v in values.items()}
    try:
        refuse_unknown(cls, values, where)
    except ConfigError as error:
        raise RecipeError(str(error)) from None
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], f"{where}: {k}") for k, v in values.items()})


FLAT_SECTIONS = ("recover", "reconstruct")  # a section of these is the job's ``<name>_*`` settings


def _flatten_sections(raw: dict[str, Any], where: str, overriding: bool = False) -> None:
    """A ``recover:`` section (steps, method, loss, ...) is the job's ``recover_*`` settings, a
    ``reconstruct:`` one (epochs, lr, ...) its ``reconstruct_*`` settings. In the file, a setting in
    both places is refused; from overrides (``recover.steps=7``) the section wins."""
    for name in FLAT_SECTIONS:
        section = raw.pop(name, None)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise RecipeError(f"{where}: {name} must be a mapping of {name}_* settings without the prefix (e.g. "
                              f"{'steps: 50' if name == 'recover' else 'epochs: 4'}), got {section!r}")
        for key, value in section.items():
            flat = key if key.startswith(f"{name}_") else f"{name}_{key}"
            if flat in raw and not overriding:
                raise RecipeError(f"{where}: {flat} is set twice (at the top and in the {name} section): keep one")
            raw[flat] = value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe and apply ``KEY=VALUE`` overrides (dotted keys reach into sections)."""
    path = Path(path)
    if not path.exists() and not path.suffix:
        path = Path("recipes") / f"{path}.yaml"
    if not path.exists():
        raise RecipeError(f"recipe {path} not found (give a YAML file, or a name from ./recipes)")
    raw = _yaml(path.read_text(), str(path)) or {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of settings, got {type(raw).__name__}")
    for name in SECTIONS:  # "lora:" with nothing under it turns the stage on with its defaults
        if name in raw and raw[name] is None:
            raw[name] = {}
    raw = dict(raw)
    _flatten_sections(raw, str(path))
    for override in overrides:
        keys, value = _parse_override(override)
        target = raw
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise RecipeError(f"override {override!r}: {key} is not a section")
        target[keys[-1]] = value
    _flatten_sections(raw, f"{path} (overrides)", overriding=True)
    sections = {name: raw.pop(name, False) for name in SECTIONS}
    output = raw.pop("output", None) or f"runs/{path.stem}"
    prune = _build(PruneSettings, raw, str(path))
    built = {}
    for name, cls in SECTIONS.items():
        section = sections[name]
        if section is False:
            built[name] = None
        elif isinstance(section, dict):
            built[name] = _build(cls, section, f"{path}: {name}")
        else:
            raise RecipeError(f"{path}: {name} must be a mapping of settings (or false to skip the stage), got {section!r}")
    return Recipe(prune=prune, output=output, source={"path": str(path), "overrides": list(overrides)}, given=raw, **built)


def run_recipe(recipe: Recipe) -> dict[str, Any]:
    """Prune, then the optional LoRA and export stages; returns the result (also written to
    ``<output>/result.json`` with the plan and plots)."""
    start = time.perf_counter()
    settings = recipe.prune
    if recipe.export is not None:  # fail now, not after an hour of pruning and finetuning
        if "save_model" in recipe.given:
            raise RecipeError("save_model and the export section both save the model: keep one (the export section "
                              "takes format: plain | compact)")
        settings.save_model = "none"  # the export stage is the save
        folder = Path(recipe.export.folder or Path(recipe.output) / MODEL_FOLDER)
        if folder.exists() and not recipe.export.overwrite:
            raise RecipeError(f"export folder {folder} exists: set export.overwrite=true or another export.folder")
        from .export import FORMATS

        if recipe.export.format not in FORMATS:
            raise RecipeError(f"export.format must be one of {', '.join(FORMATS)}, got {recipe.export.format!r}")
    if recipe.lora is not None and settings.offload == "disk" and resolve_device(settings.device).type != "cpu":
        raise RecipeError("the lora stage cannot train a model whose blocks are offloaded to a GPU one at a time (not "
                          "built yet): set device: cpu, or drop offload: disk (or the lora section)")
    settings.search_checkpoint = settings.search_checkpoint or f"{recipe.output}/search_checkpoint.json"
    settings.recover_checkpoint = settings.recover_checkpoint or f"{recipe.output}/recovery_checkpoint.pt"
    settings.reconstruct_checkpoint = settings.reconstruct_checkpoint or f"{recipe.output}/reconstruct_checkpoint"
    check_job(settings, recipe.given, recipe.output, unused="warn")  # a recipe may describe more than this job
    result, plan, inputs = prune_and_measure(settings)
    result["recipe"] = {**recipe.source, **{k: asdict(v) for k, v in (("lora", recipe.lora), ("export", recipe.export)) if v}}
    model = inputs.model
    try:
        if recipe.lora is not None:
            model = _lora_stage(recipe.lora, settings, inputs, result)
        if recipe.export is not None:
            _export_stage(recipe.export, settings, model, plan, inputs, result, recipe.output)
        elif settings.save_model != "none":  # the final model: merged after LoRA
            result["saved_model"] = save_final_model(model, inputs.tokenizer, plan, Path(recipe.output) / MODEL_FOLDER,
                                                     settings.save_model)
    finally:
        release(inputs.model)
    result["seconds"] = time.perf_counter() - start
    write_outputs(result, plan, recipe.output, Path(recipe.output) / "result.json")
    if settings.json:
        write_outputs(result, plan, None, settings.json)
    return result


def _perplexity(model, windows, settings: PruneSettings, desc: str) -> float:
    from .evaluate import perplexity

    value = perplexity(model, windows, settings.eval_batch_size, progress=settings.progress, desc=desc)
    log.info("%s: %.3f", desc, value)
    return value


def _lora_stage(lora: LoraSettings, settings: PruneSettings, inputs, result: dict[str, Any]):
    """Sparse LoRA on calibration-corpus windows (another seed), then merge; returns the merged model."""
    from peft import LoraConfig, get_peft_model

    from . import data
    from .lora import sparse_lora, train_adapters
    from .models import block_linears, find_blocks, measure_sparsity
    from .nm import is_conv1d

    linears = block_linears(find_blocks(inputs.model)[0])
    targets = lora.targets or sorted({name.split(".")[-1] for name in linears})
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        fan_in_fan_out=any(is_conv1d(m) for m in linears.values()))
    peft_model = get_peft_model(inputs.model, config)
    sparse_lora(peft_model)
    batches = data.sample_calibration(inputs.calib_tokens, lora.steps * lora.batch_size, lora.seqlen, lora.seed,
                                      inputs.bos_id, batch_size=lora.batch_size)
    t0 = time.perf_counter()
    losses = train_adapters(peft_model, batches, lora.lr, progress=settings.progress)
    train_seconds = time.perf_counter() - t0
    peft_model.eval()
    after_lora = _perplexity(peft_model, inputs.windows, settings, "perplexity after LoRA")
    merged = peft_model.merge_and_unload()
    if "samples" in result:
        sampler = Samples(inputs.tokenizer, inputs.bos_id)
        sampler.take("lora", merged)
        result["samples"].update(sampler.texts)
    result["lora"] = {
        "targets": targets, "train_tokens": lora.steps * lora.batch_size * lora.seqlen, "train_seconds": train_seconds,
        "first_loss": losses[0], "last_loss": losses[-1], "ppl_after_lora": after_lora,
        "ppl_after_merge": _perplexity(merged, inputs.windows, settings, "perplexity after merge"),
        "measured_sparsity_after_merge": measure_sparsity(merged).as_dict(),
    }
    return merged


def _export_stage(export: ExportSettings, settings: PruneSettings, model, plan, inputs, result: dict[str, Any],
                  output: str) -> None:
    """save_pruned, then reload the folder with plain transformers, on the job's device in its
    dtype (offloaded again if the job was), and measure it."""
    from transformers import AutoModelForCausalLM

    from .devices import resolve_dtype
    from .export import load_pruned, save_pruned, weight_bytes
    from .models import input_device, measure_sparsity
    from .offload import offload_to_disk

    folder = Path(export.folder or Path(output) / MODEL_FOLDER)
    probe = [inputs.calibration[0][:2]]
    record = save_pruned(model, folder, plan, inputs.tokenizer, drop_pruned_blocks=export.drop_pruned_blocks,
                         probe=probe, overwrite=export.overwrite, format=export.format)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    started = time.perf_counter()
    offloaded = settings.offload == "disk"  # read in the saved dtype, converted tensor by tensor into the files
    if export.format == "compact":  # only the library reads it
        reloaded = load_pruned(folder, dtype="auto" if offloaded else dtype, masks=False)[0]
    else:
        reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype="auto" if offloaded else dtype).eval()
    if offloaded:
        offload_to_disk(reloaded, settings.offload_folder, dtype, device)
    else:
        reloaded.to(device)
    load_seconds = time.perf_counter() - started
    result["export"] = {
        "reload_device": str(input_device(reloaded)), "reload_dtype": str(dtype).removeprefix("torch."),
        "folder": str(folder), "removed_blocks": record.removed_blocks,
        "kept_full_blocks": record.kept_full_blocks, "parameters_before": record.parameters_before,
        "parameters_after": record.parameters_after,
        "bytes": weight_bytes(folder), "format": export.format, "load_seconds": load_seconds,
        "ppl_after_reload": _perplexity(reloaded, inputs.windows, settings, f"perplexity after {export.format} reload"),
        "measured_sparsity_after_reload": measure_sparsity(reloaded).as_dict(),
    }
    release(reloaded)  # an offloaded reload's files
    if export.packed_2of4:
        from .semistructured import save_packed_2of4, summarize

        result["export"]["packed_2of4"] = summarize(save_packed_2of4(model, folder.parent / f"{folder.name}-2of4.safetensors"))
