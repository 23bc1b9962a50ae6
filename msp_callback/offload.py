"""Models larger than memory: weights in memory-mapped files (``offload="disk"``).

`offload_to_disk` moves every large tensor of a model (embeddings, the blocks' weights, and the
masks `pruner.prune` installs later) into a file of its own, mapped shared into memory. The
operating system then pages each block in when a stage reads it, and in-place writes (the pruned
weights, the level cache's swaps) go back to the file: resident *anonymous* memory stays at one
block's working set plus the activations, whatever the model's size, and the page cache holds
what it has room for. Every stage already walks the blocks in order (`block_walk`), so nothing
else changes; the level cache goes to disk with the model (`storage.TensorStore`).

This is the CPU form of offloading. Bringing blocks of such a model onto a GPU one at a time
(accelerate's ``device_map`` hooks) is not built yet: `check_offload` refuses that combination.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from .storage import TensorStore

log = logging.getLogger(__name__)

OFFLOADS = ("none", "disk")
MIN_BYTES = 1 << 16  # smaller tensors (norms, biases, rotary tables) stay in memory


HEAP_MMAP_THRESHOLD = 1 << 20  # allocations from 1 MiB up get their own mapping, returned to the system when freed


def bound_heap() -> bool:
    """Make glibc map every allocation of 1 MiB or more on its own, so a freed tensor's memory
    returns to the system at once. By default glibc raises this threshold up to 32 MiB as large
    blocks are freed and then keeps freed activations and statistics in its heap: measured on a 1B
    model offloaded to disk, that doubled the peak anonymous memory of the Fisher and prune stages
    (1.38 and 1.47 GiB against 0.72 and 0.85 with the threshold fixed). Returns False where the C
    library is not glibc (nothing is changed there)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, HEAP_MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class OffloadError(ValueError):
    """An offload setting this machine or model cannot honour."""


def check_offload(offload: str, device: torch.device) -> None:
    if offload not in OFFLOADS:
        raise OffloadError(f"offload (--offload) must be one of {', '.join(OFFLOADS)}, got {offload!r}")
    if offload == "disk" and device.type != "cpu":
        raise OffloadError(f"--offload disk runs on the CPU (the weights are memory-mapped files); with --device {device} "
                           "load the model in bfloat16 on the GPU, or use --device cpu --offload disk")


class DiskOffload:
    """The files behind an offloaded model's tensors; `adopt` moves tensors in, `close` deletes."""

    def __init__(self, folder: str | Path | None = None):
        self.store = TensorStore("disk", torch.device("cpu"), parent=folder, label="offloaded weights")
        self._mine: set[int] = set()  # data pointers of the storages this offload created
        self.bytes = 0

    def holds(self, tensor: Tensor) -> bool:
        return tensor.untyped_storage().data_ptr() in self._mine

    @torch.no_grad()
    def adopt(self, module: nn.Module, dtype: torch.dtype | None = None) -> int:
        """Move every large CPU parameter and buffer of ``module`` not yet in a file into one
        (converted to ``dtype`` when given, for floating tensors); returns the bytes moved."""
        moved = 0
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.device.type != "cpu" or self.holds(tensor):
                continue
            source = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
            if source.numel() * source.element_size() < MIN_BYTES:
                tensor.data = source
                continue
            mapped = self.store.put(source)
            self._mine.add(mapped.untyped_storage().data_ptr())
            tensor.data = mapped
            moved += mapped.numel() * mapped.element_size()
        self.bytes += moved
        return moved

    def close(self) -> None:
        """Remove the folder. The files are unlinked as soon as they are mapped, so their disk
        space returns when the tensors are freed, and a killed job leaves nothing behind."""
        self.store.close()


def offload_to_disk(model: nn.Module, folder: str | Path | None = None, dtype: torch.dtype | None = None) -> DiskOffload:
    """Move ``model``'s large tensors into memory-mapped files under ``folder`` (default: the
    scratch folder, see `storage.scratch_dir`) and remember the offload on the model."""
    bound_heap()
    offload = DiskOffload(folder)
    moved = offload.adopt(model, dtype)
    model.__dict__["_msp_offload"] = offload  # plain attribute: not a submodule, not saved
    log.info("offloaded %.2f GB of weights to %s", moved / 1e9, offload.store.folder)
    return offload


def offload_of(model: nn.Module) -> DiskOffload | None:
    """The model's `DiskOffload`, or None when its weights are in memory."""
    return model.__dict__.get("_msp_offload")


def release(model: nn.Module) -> None:
    """Remove the model's offload folder, if it has one (its tensors stay readable)."""
    offload = model.__dict__.pop("_msp_offload", None)
    if offload is not None:
        offload.close()
