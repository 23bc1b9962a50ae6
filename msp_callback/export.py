"""Saving a pruned model so that it stays pruned, and loading it back.

`save_pruned` writes an ordinary transformers folder (safetensors, config, tokenizer) holding the
*effective* weights, zeros included, so plain ``AutoModelForCausalLM.from_pretrained`` gives the
same logits; ``msp_export.json`` beside it keeps the plan. Blocks at level M (every weight of
every linear pruned) are removed by default once a probe shows they are an identity; the config's
layer count and per-layer lists follow. `load_pruned` reloads the folder and re-installs the
masks on the remaining blocks, so finetuning can go on sparse.

The folder is written under a temporary name and renamed at the end: a failed save leaves nothing.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .atomic_files import atomic_folder
from .block_walk import block_output
from .distributed import world
from .models import block_linears, blocks_path, find_blocks, fingerprint, input_device
from .nm import NMPatternError, check_pattern, install_mask, is_conv1d, mask_from_zeros, mask_of, to_out_in
from .packaged import file_sha256
from .plan import PlanError, SparsityPlan
from .records import load_record, stamp, unstamp, write_json
from .saving import CONFIG_KEY, config_entry, plan_from_config, restore_masks

log = logging.getLogger(__name__)

RECORD_FILE = "msp_export.json"
RECORD_VERSION = 1


class ExportError(RuntimeError):
    """The model cannot be exported as asked."""


@dataclass
class ExportRecord:
    """What `save_pruned` did; written as ``msp_export.json`` beside the weights."""

    plan: SparsityPlan
    removed_blocks: list[int] = field(default_factory=list)  # indices in the original model
    kept_full_blocks: dict[int, str] = field(default_factory=dict)  # level-M blocks kept, and why
    parameters_before: int = 0
    parameters_after: int = 0
    fingerprint: dict[str, Any] | None = None  # of the exported model
    format: str = "plain"  # or "compact" (see `compact`)
    compact: dict[str, Any] | None = None  # compact: its file, SHA-256 and size

    @property
    def kept_blocks(self) -> list[int]:
        """Original indices of the blocks the exported model has, in order."""
        removed = set(self.removed_blocks)
        return [i for i in range(self.plan.num_blocks) if i not in removed]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["plan"] = self.plan.to_dict()
        data["kept_full_blocks"] = {str(k): v for k, v in self.kept_full_blocks.items()}
        return stamp(data, RECORD_VERSION)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExportRecord":
        data = unstamp(data, "export record", RECORD_VERSION, ExportError)
        data["plan"] = SparsityPlan.from_dict(data["plan"])
        data["kept_full_blocks"] = {int(k): v for k, v in data.get("kept_full_blocks", {}).items()}
        return cls(**data)


# ---------------------------------------------------------------------------- weights
def effective_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()``: masked layers already write their effective weights under the plain
    keys (see `saving`); a layer with other parametrizations besides the mask is refused."""
    state = model.state_dict()
    left = [key for key in state if ".parametrizations." in key]
    if left:
        raise ExportError(f"{left[0]} belongs to a parametrization msp_callback did not install: remove it "
                          "(torch.nn.utils.parametrize.remove_parametrizations) before exporting")
    return state


def _without_blocks(state: dict[str, Tensor], prefix: str, removed: list[int]) -> dict[str, Tensor]:
    """Drop the removed blocks' keys and renumber the others consecutively."""
    removed_set, lead = set(removed), f"{prefix}."
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not key.startswith(lead):
            out[key] = value
            continue
        index_text, rest = key[len(lead):].split(".", 1)
        index = int(index_text)
        if index in removed_set:
            continue
        new_index = index - sum(1 for r in removed if r < index)
        out[f"{lead}{new_index}.{rest}"] = value
    return out


def _config_without_blocks(config: Any, num_blocks: int, removed: list[int]) -> Any:
    """A copy of ``config`` for the model without the removed blocks: the layer count, and every
    per-layer list (attribute named ``*layer*`` with one entry per block, e.g. Gemma's
    ``layer_types``)."""
    config = copy.deepcopy(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "num_hidden_layers", None) != num_blocks:
        raise ExportError(
            f"the config says num_hidden_layers={getattr(text, 'num_hidden_layers', None)} but the model "
            f"has {num_blocks} decoder blocks; cannot remove blocks safely (export with drop_pruned_blocks=False)"
        )
    removed_set = set(removed)
    for name, value in list(vars(text).items()):
        if "layer" in name and isinstance(value, (list, tuple)) and len(value) == num_blocks:
            setattr(text, name, type(value)(v for i, v in enumerate(value) if i not in removed_set))
            log.info("config.%s: removed entries %s", name, removed)
    text.num_hidden_layers = num_blocks - len(removed)
    return config


# ---------------------------------------------------------------------------- identity check
@torch.no_grad()
def identity_deviation(model: nn.Module, indices: list[int], probe: list[Tensor]) -> dict[int, float]:
    """Largest |output - input| of each listed block over the ``probe`` batches of token ids,
    relative to the largest |input|, measured with hooks during ordinary forwards."""
    blocks = find_blocks(model)
    worst = {i: 0.0 for i in indices}

    def hook(index: int):
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            diff = (block_output(output).float() - hidden.float()).abs().max()
            scale = hidden.float().abs().max().clamp_min(1e-12)
            worst[index] = max(worst[index], float(diff / scale))

        return record

    handles = [blocks[i].register_forward_hook(hook(i), with_kwargs=True) for i in indices]
    device = input_device(model)
    try:
        for batch in probe:
            model(input_ids=batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return worst


def _nonzero_biases(block: nn.Module) -> list[str]:
    return [name for name, module in block.named_modules()
            if getattr(module, "bias", None) is not None and bool(module.bias.detach().ne(0).any())]


def _all_at(level: int | Mapping[str, int], m: int) -> bool:
    return all(v == m for v in level.values()) if isinstance(level, Mapping) else level == m


def removable_blocks(
    model: nn.Module, levels: Sequence[int | Mapping[str, int]], m: int, probe: list[Tensor] | None = None,
    tolerance: float = 1e-6,
) -> tuple[list[int], dict[int, str]]:
    """Blocks of ``model`` at level M (``levels``: one per block, an int or {linear: level}) that are an identity on
    ``probe`` (default: 2 x 64 random tokens); returns (removable indices, {kept index: reason})."""
    full = [i for i, level in enumerate(levels) if _all_at(level, m)]
    if not full:
        return [], {}
    if probe is None:
        vocab = model.get_input_embeddings().num_embeddings
        probe = [torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(0))]
    deviation = identity_deviation(model, full, probe)
    blocks = find_blocks(model)
    removable, kept = [], {}
    for i in full:
        if deviation[i] <= tolerance:
            removable.append(i)
            continue
        biases = _nonzero_biases(blocks[i])
        why = f"non-zero biases ({', '.join(biases[:4])}) still add to the residual stream" if biases else "a path the masks do not silence"
        kept[i] = f"not an identity (output differs from input by {deviation[i]:.2e} relative): {why}"
    if len(removable) == len(blocks):
        raise ExportError("every decoder block is at level M: removing them all leaves no model; lower the target")
    return removable, kept


# ---------------------------------------------------------------------------- save / load
def _check_follows_levels(model: nn.Module, levels: list[dict[str, int]], m: int) -> None:
    for index, (block, level) in enumerate(zip(find_blocks(model), levels)):
        for name, module in block_linears(block).items():
            check_pattern(to_out_in(module, module.weight.detach()), level[name], m, f"block {index} {name}")


def _blocks_of(model: nn.Module, plan: SparsityPlan | ExportRecord) -> tuple[SparsityPlan, list[int], list[int]]:
    """(plan, original index of each block the model has, blocks removed earlier) for a plan or
    for the record of an earlier export (a model loaded with `load_pruned` and trained further)."""
    found = fingerprint(model)
    if isinstance(plan, ExportRecord):
        kept = plan.kept_blocks
        if found["num_blocks"] != len(kept) or (plan.fingerprint and plan.fingerprint["shape_digest"] != found["shape_digest"]):
            raise PlanError(f"this export record describes {len(kept)} remaining blocks of other shapes than the "
                            f"model's {found['num_blocks']}: it belongs to another model")
        return plan.plan, kept, list(plan.removed_blocks)
    plan.check_model(found)
    return plan, list(range(plan.num_blocks)), []


def save_pruned(
    model: nn.Module,
    directory: str | os.PathLike,
    plan: SparsityPlan | ExportRecord,
    tokenizer: Any = None,
    drop_pruned_blocks: bool = True,
    probe: list[Tensor] | None = None,
    overwrite: bool = False,
    format: str = "plain",
) -> ExportRecord:
    """Write ``model`` (masked or baked) as a transformers folder that stays as sparse as ``plan``.

    Args:
        plan: the plan the model was pruned with, checked against its weights; or, for a model
            loaded with `load_pruned` (and perhaps trained further), the record it came with.
        tokenizer: saved alongside if given.
        drop_pruned_blocks: remove blocks at level M that a probe shows are an identity.
        probe: batches of token ids for that check (default: random tokens).
        overwrite: replace an existing folder (only once the new one is complete).
        format: "plain" (safetensors any ``from_pretrained`` reads, zeros included) or "compact"
            (each block linear as kept values plus packed positions, `compact`; read it with
            `load_pruned`, which gives the same weights and masks bit for bit).

    Under torch.distributed only rank 0 writes; the other ranks wait and read its record.
    """
    if hasattr(model, "peft_config"):
        raise ExportError("this is a peft model: merge the adapters first (model = model.merge_and_unload() "
                          "after msp_callback.lora.sparse_lora(model)), then export")
    if not hasattr(model, "save_pretrained"):
        raise ExportError(f"{type(model).__name__} is not a transformers model (no save_pretrained)")
    if format not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise ExportError(f"{directory} exists; choose another folder or pass overwrite=True")
    check_replaceable(directory)
    rank, size = world()
    if size > 1 and rank != 0:  # one writer; the others wait for it
        dist.barrier()
        return read_record(directory)
    try:
        return _save(model, directory, plan, tokenizer, drop_pruned_blocks, probe, format)
    finally:
        if size > 1:
            dist.barrier()


def _save(model: nn.Module, directory: Path, plan: SparsityPlan | ExportRecord, tokenizer: Any,
          drop_pruned_blocks: bool, probe: list[Tensor] | None, format: str = "plain") -> ExportRecord:
    plan, original, removed_before = _blocks_of(model, plan)
    levels = [plan.linear_levels(i, block_linears(block)) for i, block in zip(original, find_blocks(model))]
    _check_follows_levels(model, levels, plan.m)

    removed, kept_full = removable_blocks(model, levels, plan.m, probe) if drop_pruned_blocks else ([], {})
    for i, reason in kept_full.items():
        log.warning("block %d is at level M but kept: %s", original[i], reason)
    state = effective_state_dict(model)
    layouts: dict[str, dict[str, Any]] = {}
    if format == "compact":
        state, layouts = _compact_state(model, state, levels, plan.m)
    if removed:
        state = _without_blocks(state, blocks_path(model), removed)
        layouts = _without_blocks(layouts, blocks_path(model), removed)
        log.info("removed %d fully pruned blocks: %s", len(removed), [original[i] for i in removed])

    record = ExportRecord(plan=plan, removed_blocks=sorted(removed_before + [original[i] for i in removed]),
                          kept_full_blocks={original[i]: why for i, why in kept_full.items()},
                          parameters_before=sum(p.numel() for p in model.parameters()),
                          parameters_after=_count_unique(_expanded_shapes(state, layouts)), format=format)
    with atomic_folder(directory, may_replace=check_replaceable) as staging:  # checked again: it may have changed
        if format == "compact":
            record.compact = _write_compact(staging / COMPACT_FILE, state, layouts)
        else:
            model.save_pretrained(staging, state_dict=dict(state))  # (it consumes the dict) fills config.architectures / dtype
        config = _config_without_blocks(model.config, len(original), removed) if removed else copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]
        setattr(config, CONFIG_KEY, config_entry(plan, record.removed_blocks))
        config.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        record.fingerprint = _check_folder_matches(staging, _expanded_shapes(state, layouts))
        write_json(staging / RECORD_FILE, record.to_dict())
    log.info("saved %s (%d -> %d parameters)", directory, record.parameters_before, record.parameters_after)
    return record


# ---------------------------------------------------------------------------- compact form
FORMATS = ("plain", "compact")
COMPACT_FILE = "model.compact.safetensors"


def _compact_state(model: nn.Module, state: dict[str, Tensor], levels: list[dict[str, int]], m: int
                   ) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """``state`` with each block linear's weight replaced by ``<key>.values`` and ``<key>.positions``
    (`compact.pack`), from its installed mask (or its zeros at its level); and each one's layout."""
    from .compact import pack

    prefix = blocks_path(model)
    out, layouts = dict(state), {}
    for index, (block, block_levels) in enumerate(zip(find_blocks(model), levels)):
        for name, module in block_linears(block).items():
            level = block_levels[name]
            key = f"{prefix}.{index}.{name}.weight"
            weight = to_out_in(module, state[key])
            mask = mask_of(module)
            keep = to_out_in(module, mask) if mask is not None else mask_from_zeros(weight, level, m, key)
            try:
                values, positions = pack(weight.cpu(), keep.cpu(), level, m)
            except NMPatternError as error:
                raise ExportError(f"{key}: its mask does not follow level {level} of the plan ({error}); export the "
                                  "model with the plan it was pruned with") from None
            del out[key]
            out[f"{key}.values"], out[f"{key}.positions"] = values.cpu(), positions
            layouts[key] = {"out_features": weight.shape[0], "in_features": weight.shape[1], "m": m, "level": level,
                            "transposed": is_conv1d(module)}
    return out, layouts


def _expanded_shapes(state: dict[str, Tensor], layouts: dict[str, dict[str, Any]]) -> dict[str, Tensor]:
    """The state with each compact weight as a meta tensor of its full shape (for counts and checks)."""
    if not layouts:
        return state
    out = {k: v for k, v in state.items() if not k.endswith((".values", ".positions"))}
    for key, layout in layouts.items():
        shape = (layout["out_features"], layout["in_features"])
        out[key] = torch.empty(shape[::-1] if layout["transposed"] else shape, device="meta")
    return out


def _write_compact(path: Path, state: dict[str, Tensor], layouts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One safetensors file (tied tensors once, their other names as aliases); its SHA-256."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for key, tensor in state.items():
        shared = tensor.device.type != "meta" and tensor.numel() > 0  # empty tensors all sit at address 0
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)) if shared else (key,)
        if identity in first:
            aliases[key] = first[identity]
            continue
        first[identity] = key
        tensors[key] = tensor.detach().cpu().contiguous()
    save_file(tensors, str(path), metadata={"format": "msp-compact-nm", "layouts": json.dumps(layouts),
                                             "aliases": json.dumps(aliases)})
    return {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size}


def _read_compact(directory: Path, record: ExportRecord) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the full state dict, keep mask per compact weight key in module layout), after checking
    the file against the record's SHA-256."""
    from safetensors import safe_open

    from .compact import PackedShape, unpack

    info = record.compact or {}
    path = directory / info.get("file", COMPACT_FILE)
    if not path.exists():
        raise ExportError(f"{path} is missing: the compact export in {directory} is incomplete; export it again")
    if file_sha256(path) != info.get("sha256"):
        raise ExportError(f"{path} is damaged (its SHA-256 differs from the one in {RECORD_FILE}: truncated or "
                          "changed after export); export it again")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    layouts, aliases = json.loads(meta.get("layouts", "{}")), json.loads(meta.get("aliases", "{}"))
    for alias, original in aliases.items():
        if original not in tensors:
            raise ExportError(f"{path}: {alias} names {original}, which the file does not hold; export it again")
        tensors[alias] = tensors[original]
    state: dict[str, Tensor] = {k: v for k, v in tensors.items() if not k.endswith((".values", ".positions"))}
    masks: dict[str, Tensor] = {}
    for key, layout in layouts.items():
        shape = PackedShape(layout["out_features"], layout["in_features"], layout["m"], layout["level"])
        try:
            weight, keep = unpack(tensors[f"{key}.values"], tensors[f"{key}.positions"], shape)
        except (KeyError, NMPatternError) as error:
            raise ExportError(f"{path}: {key} cannot be read back ({error}); export it again") from None
        if layout["transposed"]:
            weight, keep = weight.t().contiguous(), keep.t().contiguous()
        state[key], masks[key] = weight, keep
    return state, masks


def _load_compact(directory: Path, record: ExportRecord, dtype: torch.dtype | str, masks: bool, **kwargs: Any):
    import transformers
    from transformers import AutoConfig

    state, keeps = _read_compact(directory, record)
    config = AutoConfig.from_pretrained(directory)
    model_class = getattr(transformers, (config.architectures or [""])[0], None)
    if model_class is None:
        raise ExportError(f"{directory}/config.json names no transformers architecture ({config.architectures})")
    model = model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype, **kwargs)
    if masks:
        for key, keep in keeps.items():
            module = model.get_submodule(key.removesuffix(".weight"))
            install_mask(module, keep.to(module.weight.device))
    return model


def _count_unique(state: dict[str, Tensor]) -> int:
    seen: dict[int, int] = {}
    for tensor in state.values():
        if tensor.is_floating_point():
            seen[id(tensor) if tensor.device.type == "meta" else tensor.data_ptr()] = tensor.numel()
    return sum(seen.values())


def _check_folder_matches(folder: Path, state: dict[str, Tensor]) -> dict[str, Any]:
    """Build the model the written config describes (on the meta device) and check that its
    parameters are exactly the ones saved, so a plain ``from_pretrained`` cannot silently
    re-initialise any (e.g. a config field that places layers by index). Returns its fingerprint."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state.items()}
    if expected != saved:
        differ = sorted(set(expected) ^ set(saved)) or sorted(k for k in expected if expected[k] != saved[k])
        raise ExportError(
            f"the saved config describes a model whose weights differ from the saved ones ({differ[:4]}...): "
            "this architecture's config places layers in a way the block removal does not update; "
            "export with drop_pruned_blocks=False"
        )
    return fingerprint(model)


def check_replaceable(directory: Path) -> None:
    """Overwriting replaces only an earlier export (or an empty folder), never other files."""
    if directory.exists() and any(directory.iterdir()) and not (directory / RECORD_FILE).exists():
        raise ExportError(f"{directory} exists and is not an export (no {RECORD_FILE}); overwrite only replaces "
                          "an earlier export: choose another folder")


def weight_bytes(directory: str | os.PathLike) -> int:
    """Size of the safetensors weight files in an exported folder."""
    return sum(f.stat().st_size for f in Path(directory).glob("*.safetensors"))


def folder_bytes(directory: str | os.PathLike) -> int:
    """Size of every file in an exported folder (weights, config, tokenizer, record)."""
    return sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())


def read_record(directory: str | os.PathLike) -> ExportRecord:
    path = Path(directory) / RECORD_FILE
    if not path.exists():
        raise ExportError(f"{directory} has no {RECORD_FILE}: it was not written by msp_callback.export.save_pruned")
    return load_record(path, "export record", ExportError, ExportRecord.from_dict)


def load_pruned(directory: str | os.PathLike, dtype: torch.dtype | str = "auto", masks: bool = True, **kwargs: Any):
    """Load a pruned model folder: ``(model, record)``, with the N:M masks installed
    (``masks=True``) so that further training keeps the sparsity. The folder is one written by
    `save_pruned` (its ``msp_export.json``), or by any ``save_pretrained`` / ``trainer.save_model``
    of a model pruned with this library (the plan in its ``config.json``). ``dtype="auto"`` keeps
    the saved one; other keyword arguments go to ``from_pretrained``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if (Path(directory) / RECORD_FILE).exists():
        record = read_record(directory)
    else:  # a folder or a hub id holding an ordinary save (the plan in its config)
        where = {k: kwargs[k] for k in ("revision", "subfolder", "token", "cache_dir", "local_files_only") if k in kwargs}
        try:
            found = plan_from_config(AutoConfig.from_pretrained(directory, **where))
        except (OSError, ValueError):  # no config there, or not a transformers one
            found = None
        if found is None:
            raise ExportError(f"{directory} holds no pruned model: no {RECORD_FILE} and no plan (msp_sparsity) in "
                              "a config.json; save the model after pruning it with msp_callback")
        record = ExportRecord(plan=found[0], removed_blocks=found[1])
    if record.format == "compact":
        model = _load_compact(Path(directory), record, dtype, masks, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs)
    model.eval()
    if record.fingerprint is not None:
        found_print = fingerprint(model)
        if found_print["shape_digest"] != record.fingerprint["shape_digest"]:
            raise ExportError(f"the weights in {directory} do not match {RECORD_FILE} (different shapes)")
    if masks and record.format != "compact":  # each remaining block's masks from its zeros at its planned level
        restore_masks(model, record.plan, record.removed_blocks)
    return model, record
