"""Finding decoder blocks and their linears in any causal LM (loading is in `loading`).

The rule is generic, with no per-architecture table: the decoder blocks are the largest
``nn.ModuleList`` whose entries all share one class and contain linear layers (``model.layers``
in Llama/Qwen2/Gemma3, ``model.decoder.layers`` in OPT, ``transformer.h`` in GPT-2). Embeddings
and the LM head sit outside that list and are never pruned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .nm import is_conv1d


class ModelStructureError(ValueError):
    """The model does not have the structure pruning needs."""


def is_prunable_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (is_conv1d(module) and getattr(module, "weight", None) is not None)


def _weight_shape_out_in(module: nn.Module) -> tuple[int, int]:
    shape = tuple(module.weight.shape)
    return (shape[1], shape[0]) if is_conv1d(module) else (shape[0], shape[1])


def input_device(model: nn.Module) -> torch.device:
    """Where the model takes its token ids: its input embeddings' device (the model's device,
    also when its blocks are offloaded and brought to that device one at a time)."""
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of ``model`` (see the module docstring for the rule)."""
    best: tuple[int, nn.ModuleList] | None = None
    for _, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if not any(is_prunable_linear(m) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, module)
    if best is None:
        raise ModelStructureError(
            f"found no decoder blocks in {type(model).__name__}: pruning needs an nn.ModuleList of "
            "identical blocks that contain nn.Linear (or GPT-2 Conv1D) layers, as in a transformers "
            "causal LM (model.layers, transformer.h, ...). Pass a causal language model."
        )
    return best[1]


def check_weights_in_memory(model: nn.Module) -> None:
    """Refuse a model with weights on the meta device: an Accelerate ``device_map`` that offloads
    modules to "cpu" or "disk" leaves them there outside its forward hooks, so pruning could
    neither read nor write them (and would leave the model unpruned while carrying masks)."""
    name = next((name for name, p in model.named_parameters() if p.is_meta), None)
    if name is None:
        return
    offloaded = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values() if d in ("cpu", "disk")})
    raise ModelStructureError(
        f"{name} is on the meta device" + (f" (Accelerate device_map with {' and '.join(offloaded)} entries)" if offloaded else "")
        + ": its weights exist only inside forward, so they cannot be pruned; load the model without an offloading "
        "device_map, and for a model larger than the device use `msp prune --offload disk` "
        "(msp_callback.offload.offload_to_disk), which brings the blocks onto the device one at a time")


def check_causal_lm(model: nn.Module) -> None:
    """Refuse models this library cannot prune: weights not in memory (`check_weights_in_memory`),
    and transformers models that do not predict the next token from the left context alone
    (encoders such as BERT, encoder-decoders such as T5): N:M levels are scored and reported with
    next-token perplexity. Modules without a transformers config are taken as they are."""
    check_weights_in_memory(model)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        return
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    kind = f"{type(model).__name__} ({config.model_type})"
    if getattr(config, "is_encoder_decoder", False):
        raise ModelStructureError(f"{kind} is an encoder-decoder model; msp-callback prunes causal language models "
                                  "(decoder-only, e.g. Llama, Qwen, Gemma, GPT-2, OPT)")
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not (
            type(model).__name__ in causal and getattr(config, "is_decoder", False)):
        raise ModelStructureError(f"{kind} is a bidirectional encoder, not a causal language model: next-token "
                                  "perplexity does not measure it; msp-callback prunes decoder-only causal LMs")


def blocks_path(model: nn.Module) -> str:
    """Dotted name of the decoder-block list inside ``model`` (e.g. ``model.layers``)."""
    blocks = find_blocks(model)
    return next(name for name, module in model.named_modules() if module is blocks)


@contextmanager
def blocks_replaced(model: nn.Module, replacement: nn.ModuleList) -> Iterator[None]:
    """Put ``replacement`` where the decoder blocks are for the duration, then the blocks back."""
    blocks = find_blocks(model)
    parent_name, _, attribute = blocks_path(model).rpartition(".")
    parent = model.get_submodule(parent_name)
    setattr(parent, attribute, replacement)
    try:
        yield
    finally:
        setattr(parent, attribute, blocks)


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """The prunable linears of one block, by name relative to the block, in module order."""
    return {name: m for name, m in block.named_modules() if name and is_prunable_linear(m)}


def named_block_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every prunable linear of every block, named ``blocks.<index>.<name in block>``."""
    return {f"blocks.{i}.{name}": module
            for i, block in enumerate(find_blocks(model)) for name, module in block_linears(block).items()}


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """What identifies a model's prunable structure: architecture, block count, linear shapes."""
    blocks = find_blocks(model)
    shapes = [
        f"{i}.{name}:{_weight_shape_out_in(m)}"
        for i, block in enumerate(blocks)
        for name, m in block_linears(block).items()
    ]
    config = getattr(model, "config", None)
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    return {
        "architecture": architectures[0],
        "num_blocks": len(blocks),
        "linears_per_block": len(block_linears(blocks[0])),
        "shape_digest": hashlib.sha1("\n".join(shapes).encode()).hexdigest()[:16],
    }


@dataclass
class SparsityStats:
    """Measured zeros, in percent, over the block linears and over all parameters."""

    pruned_linears: float
    overall: float
    per_block: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {"pruned_linears_pct": self.pruned_linears, "overall_pct": self.overall, "per_block_pct": self.per_block}


def is_semi_structured(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a 2:4 semi-structured sparse tensor (`semistructured.to_semi_structured`)."""
    return isinstance(tensor, torch.sparse.SparseSemiStructuredTensor)


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The module's effective weight as an ordinary tensor (masked if parametrized; a 2:4
    semi-structured weight unpacked, as most tensor operations do not take it)."""
    weight = module.weight
    return weight.to_dense() if is_semi_structured(weight) else weight


@torch.no_grad()
def measure_sparsity(model: nn.Module) -> SparsityStats:
    """Count exact zeros in the effective (masked) weights of the block linears, and over all
    parameters (a parametrized layer counts its masked weight, not its stored original)."""
    per_block, zeros, total = [], 0, 0
    seen: set[int] = set()
    for block in find_blocks(model):
        block_zeros = block_total = 0
        for module in block_linears(block).values():
            weight = dense_weight(module)  # effective weight: masked if parametrized, unpacked if 2:4
            block_zeros += int((weight == 0).sum())
            block_total += weight.numel()
            seen.update(id(p) for p in module.parameters() if p.shape == weight.shape)
        per_block.append(100.0 * block_zeros / block_total)
        zeros, total = zeros + block_zeros, total + block_total
    other = [p for p in model.parameters() if id(p) not in seen]
    other_zeros = sum(int((p == 0).sum()) for p in other)
    all_params = total + sum(p.numel() for p in other)
    return SparsityStats(100.0 * zeros / total, 100.0 * (zeros + other_zeros) / all_params, per_block)
