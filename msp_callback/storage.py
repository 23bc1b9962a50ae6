"""Where the search's cached tensors live: the model's device, CPU memory, or files on disk.

The level cache holds a copy of every block weight plus, per weight, a rank byte (magnitude,
Wanda) or M-1 pruned copies (SparseGPT): 5 to 30+ bytes per parameter for a float32 model. That
fits beside a 135M model, but not beside an 8B one on an 80 GB GPU. `TensorStore` puts each cached
tensor where the configuration says (``cache_storage``): ``device`` (beside the model), ``cpu``
(pinned when the model is on CUDA, so copies to it are fast), or ``disk`` (memory-mapped files
in a scratch folder: the operating system pages them in as blocks are applied, so resident
memory stays small). ``auto`` picks the first that holds the estimate with a margin.

Files go under `scratch_dir` (``$MSP_SCRATCH``, else the user cache), not the system temporary
folder, which is RAM (tmpfs) on many Linux systems and would defeat the point.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

STORAGES = ("auto", "device", "cpu", "disk")
MARGIN = 0.8  # use at most this fraction of the free memory


def scratch_dir() -> Path:
    """Where memory-mapped working files go: ``$MSP_SCRATCH``, else ``<cache>/scratch``."""
    from .packaged import cache_dir

    root = Path(os.environ["MSP_SCRATCH"]) if os.environ.get("MSP_SCRATCH") else cache_dir() / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    return root


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: on CUDA the driver's free bytes plus what PyTorch's caching
    allocator has reserved but holds no tensor in (free to PyTorch, not to the driver); on the
    CPU, MemAvailable (Linux)."""
    if device.type == "cuda":
        idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + idle
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: assume it fits


def choose_storage(needed: int, device: torch.device, working: int = 0) -> str:
    """The first of device, cpu, disk whose free memory holds ``needed`` bytes with a margin;
    beside the model, ``working`` bytes (the search's own scratch: logits, statistics) must fit too."""
    if needed + working <= MARGIN * available_bytes(device):
        return "device"
    if device.type != "cpu" and needed <= MARGIN * available_bytes(torch.device("cpu")):
        return "cpu"
    return "disk"


class TensorStore:
    """Keeps tensors on the chosen storage; `close` frees what outlives the tensors (pinned blocks)."""

    def __init__(self, kind: str, device: torch.device, needed: int = 0, parent: str | Path | None = None,
                 label: str = "level cache", working: int = 0):
        """``parent``: the folder under which disk storage makes its own temporary folder
        (default `scratch_dir`); ``working``: bytes the work beside the store needs on the device."""
        if kind not in STORAGES:
            raise ValueError(f"cache_storage must be one of {', '.join(STORAGES)}, got {kind!r}")
        self.kind = choose_storage(needed, device, working) if kind == "auto" else kind
        self.device = device
        self.parent = Path(parent) if parent is not None else None
        if needed:
            log.info("%s: %.2f GB on %s", label, needed / 1e9, self.kind if self.kind != "device" else device)

    def put(self, tensor: Tensor) -> Tensor:
        """A copy of ``tensor`` on this store."""
        tensor = tensor.detach()
        if self.kind == "device":
            return tensor.clone()
        if self.kind == "cpu":
            copy = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.device.type == "cuda")
            return copy.copy_(tensor)
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="msp-", suffix=".bin", dir=self.folder)
        with os.fdopen(handle, "wb") as file:  # reserve the blocks now: a full disk is an error here, not a crash later
            if hasattr(os, "posix_fallocate") and tensor.numel():
                os.posix_fallocate(file.fileno(), 0, tensor.numel() * tensor.element_size())
        mapped = torch.from_file(name, shared=True, size=tensor.numel(), dtype=tensor.dtype)
        os.unlink(name)  # the mapping keeps the file's blocks until the tensor is freed; a killed job leaves nothing
        return mapped.view(tensor.shape).copy_(tensor)

    @property
    def folder(self) -> Path:
        """Where disk storage maps its files: ``parent``, else `scratch_dir`. No folder of its own and
        no file stays there (each is unlinked once mapped), so a killed job leaves nothing behind."""
        return self.parent if self.parent is not None else scratch_dir()

    def close(self) -> None:
        """With pinned storage, hand the freed pinned blocks back to the system (PyTorch's pinned
        host allocator keeps them cached otherwise). Drop the tensors first: a file's disk space
        returns when its last tensor is freed."""
        if self.kind == "cpu" and self.device.type == "cuda":
            release_pinned_memory()


def release_pinned_memory() -> None:
    """Return the pinned host memory no tensor uses any more to the system."""
    empty = getattr(getattr(torch, "accelerator", None), "memory", None)
    if empty is not None and hasattr(empty, "empty_host_cache"):
        empty.empty_host_cache()
