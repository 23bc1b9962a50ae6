"""LoRA that keeps the N:M sparsity, on top of peft.

Plain LoRA adds a dense update ``B @ A`` to a pruned weight: merged, it makes the model dense
again, and masked after training it loses what the adapter learned. `sparse_lora` makes every
LoRA layer whose base weight carries an N:M mask train and merge the *masked* update
``(B @ A) * mask`` instead, through peft's own LoRA-variant hook, so users keep peft's API:

    model = get_peft_model(pruned_model, LoraConfig(r=16, target_modules=[...]))
    sparse_lora(model)                   # after get_peft_model / PeftModel.from_pretrained
    ...train...
    merged = model.merge_and_unload()    # exactly as sparse as before, same outputs

(Without it, peft's merge on a parametrized base writes into a temporary and the update is
silently lost.) Adapters are saved and loaded by peft unchanged; call `sparse_lora` again after
loading or adding an adapter. Cost: each forward builds the masked (out x in) update of every
adapted layer and keeps it for backward, about one extra copy of the adapted weights in memory.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nm import mask_of, stored_weight, to_out_in

log = logging.getLogger(__name__)


class SparseLoRAError(ValueError):
    """A peft model that `sparse_lora` cannot make sparsity-preserving."""


def _lora_variant_base():
    try:
        from peft.tuners.lora.layer import LoraVariant
    except ImportError as error:  # pragma: no cover - depends on the installed peft
        raise ImportError("sparse LoRA needs peft >= 0.17 (pip install -U peft)") from error
    return LoraVariant


def _masked_delta(module: nn.Module, adapter: str) -> Tensor:
    """The adapter's update in the base weight's layout, zero wherever the mask prunes."""
    base = module.get_base_layer()
    return module.get_delta_weight(adapter) * mask_of(base)


class MaskedLoRA(_lora_variant_base()):
    """peft LoRA variant: vanilla LoRA whose update is multiplied by the base layer's N:M mask,
    in the forward pass and in merge / unmerge (which write into the parametrization's stored
    original, so the masked weight is ``(W + delta * mask) * mask``)."""

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module: nn.Module, adapter_name: str, **kwargs) -> None:
        pass

    @staticmethod
    def forward(module: nn.Module, active_adapter: str, x: Tensor, result: Tensor, **kwargs) -> Tensor:
        delta = to_out_in(module.get_base_layer(), _masked_delta(module, active_adapter))
        dropped = module.lora_dropout[active_adapter](x)
        return result + F.linear(dropped, delta.to(dropped.dtype)).to(result.dtype)

    @staticmethod
    @torch.no_grad()
    def merge_safe(module: nn.Module, active_adapter: str, orig_weight: Tensor) -> Tensor:
        original = stored_weight(module.get_base_layer())
        merged = original + _masked_delta(module, active_adapter).to(original.dtype)
        if not torch.isfinite(merged).all():
            raise ValueError(f"NaNs detected in the merged weights of adapter {active_adapter!r}")
        original.copy_(merged)
        return module.get_base_layer().weight.detach()

    @staticmethod
    @torch.no_grad()
    def merge_unsafe(module: nn.Module, active_adapter: str, orig_weight: Tensor) -> None:
        original = stored_weight(module.get_base_layer())
        original.add_(_masked_delta(module, active_adapter).to(original.dtype))

    @staticmethod
    @torch.no_grad()
    def unmerge(module: nn.Module, active_adapter: str, orig_weight: Tensor) -> Tensor:
        original = stored_weight(module.get_base_layer())
        original.sub_(_masked_delta(module, active_adapter).to(original.dtype))
        return module.get_base_layer().weight.detach()


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """peft LoRA layers of ``model`` (modules with ``lora_A`` and a ``base_layer``), by name."""
    return {name: module for name, module in model.named_modules()
            if hasattr(module, "lora_A") and hasattr(module, "get_base_layer")}


def sparse_lora(model: nn.Module) -> list[str]:
    """Make every LoRA adapter on an N:M-masked layer of the peft ``model`` keep that mask (in
    place). Returns the names of those layers; LoRA layers on unmasked bases (e.g. ``lm_head``)
    stay ordinary LoRA and are logged."""
    layers = lora_layers(model)
    if not layers:
        raise SparseLoRAError("no peft LoRA layers found: wrap the model with peft.get_peft_model(model, LoraConfig(...)) first")
    masked, dense = [], []
    for name, layer in layers.items():
        if mask_of(layer.get_base_layer()) is None:
            dense.append(name)
            continue
        if getattr(layer, "merged", False):
            raise SparseLoRAError(f"{name}: adapters are already merged; call sparse_lora before merging")
        for adapter in layer.lora_A:
            if layer.lora_bias.get(adapter, False):
                raise SparseLoRAError(f"{name}: adapter {adapter!r} has lora_bias=True, which sparse LoRA does not "
                                      "support; use LoraConfig(lora_bias=False)")
            current = layer.lora_variant.get(adapter)
            if current is not None and not isinstance(current, MaskedLoRA):
                raise SparseLoRAError(
                    f"{name}: adapter {adapter!r} uses the LoRA variant {type(current).__name__} (e.g. DoRA); "
                    "sparsity-preserving LoRA supports plain LoRA only (use_dora=False)"
                )
            layer.lora_variant[adapter] = MaskedLoRA()
        masked.append(name)
    if not masked:
        raise SparseLoRAError("none of the LoRA layers wraps an N:M-masked weight: prune the model (or load an "
                              "export with msp_callback.export.load_pruned) before get_peft_model")
    if dense:
        log.info("LoRA on %d unmasked layers stays ordinary LoRA (e.g. %s)", len(dense), dense[0])
    return masked


def train_adapters(
    model: nn.Module, batches: list[Tensor], lr: float = 2e-4, progress: bool = True
) -> list[float]:
    """A plain loop for a short finetune: one AdamW step on the next-token loss of each batch of
    token ids, over the trainable parameters only (the adapters, for a peft model). Returns the
    losses. Runs with gradients on even if the caller is under ``torch.inference_mode``."""
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SparseLoRAError("the model has no trainable parameters (wrap it with get_peft_model first)")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = params[0].device
    losses = []
    was_training = model.training
    model.train()
    with torch.inference_mode(False), torch.enable_grad():
        for batch in (bar := tqdm(batches, desc="LoRA finetune", disable=not progress)):
            batch = batch.to(device)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.train(was_training)
    return losses
