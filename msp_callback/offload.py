"""Models larger than memory: weights in memory-mapped files (``offload="disk"``).

`offload_to_disk` moves every large tensor of the decoder blocks (and on the CPU also the
embeddings and head), and later the masks `pruner.prune` installs, into a file of its own, mapped
shared into memory. The operating system pages each block in when a stage reads it, and in-place
writes (the pruned weights, the level cache's swaps) go back to the file: resident *anonymous*
memory stays at one block's working set plus the activations, whatever the model's size, and the
page cache holds what it has room for. The level cache goes to disk with the model.

On a GPU (``device`` not the CPU) the blocks stay in those files and each is brought onto the
device for its turn: forward hooks copy a block in before it runs and drop the copies after,
and the block walk (`block_walk.walk_blocks`) holds each block on the device for its visit and
its run with `DiskOffload.onloaded`, which for pruning writes the tensors that changed (and new
masks) back to the files. Embeddings, final norm and head live on the device. Every stage walks
the blocks in order (`block_walk`), so the device holds two blocks at most: the one running and
the next, whose copy is prefetched meanwhile (`DiskOffload.prefetch`). On CUDA a block passes
through page-locked staging buffers on a copy stream of its own, so its transfer runs beside the
current block's compute (a copy from the pageable, memory-mapped files would be synchronous).
Fisher traces need a backward pass through every block and are refused there (not built yet).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .models import find_blocks
from .storage import TensorStore, release_pinned_memory

log = logging.getLogger(__name__)

OFFLOADS = ("none", "disk")
MIN_BYTES = 1 << 16  # smaller tensors (norms, biases, rotary tables) stay in memory


HEAP_MMAP_THRESHOLD = 1 << 20  # allocations from 1 MiB up get their own mapping, returned to the system when freed


def bound_heap() -> bool:
    """Make glibc map every allocation of 1 MiB or more on its own, so a freed tensor's memory
    returns to the system at once. By default glibc raises this threshold up to 32 MiB as large
    blocks are freed and then keeps freed activations and statistics in its heap: on the 1B job
    of `benchmarks/offload_check.py` the offloaded run's peak anonymous memory was 2.36 GiB
    without this and 1.33 GiB with it. Returns False where the C library is not glibc (nothing changes there)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, HEAP_MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class OffloadError(ValueError):
    """An offload setting this machine or model cannot honour."""


def check_offload(offload: str) -> None:
    if offload not in OFFLOADS:
        raise OffloadError(f"offload (--offload) must be one of {', '.join(OFFLOADS)}, got {offload!r}")


class _Staging:
    """Copies of file-backed tensors to a CUDA device through reused page-locked host buffers, on a
    copy stream of their own (elsewhere: plain synchronous copies). A buffer is reused once the
    copy out of it has finished; more are made while none is free, so a block's tensors of one
    shape do not wait for each other."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._buffers: dict[tuple, list[tuple[Tensor, Any]]] = defaultdict(list)  # (shape, dtype) -> [(buffer, event)]

    def copy(self, tensor: Tensor) -> Tensor:
        """``tensor``'s copy on the device; on CUDA it is ready once `wait` was called."""
        if not self.cuda:
            return tensor.to(self.device, copy=True)
        pool = self._buffers[(tuple(tensor.shape), tensor.dtype)]
        free = next((i for i, (_, event) in enumerate(pool) if event.query()), None)
        buffer = pool.pop(free)[0] if free is not None else torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        buffer.copy_(tensor)  # reads the file's pages on this thread
        with torch.cuda.stream(self.stream):
            copy = buffer.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        pool.append((buffer, event))
        return copy

    def wait(self, copies: Iterable[Tensor]) -> None:
        """Make the current stream wait for ``copies`` (made by `copy`) and own their memory."""
        if not self.cuda:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        for copy in copies:
            copy.record_stream(current)

    def close(self) -> None:
        if self.cuda:
            self.stream.synchronize()
            self._buffers.clear()
            release_pinned_memory()


class DiskOffload:
    """The files behind an offloaded model's tensors, and the moves of blocks to the device.

    ``always_copy`` makes blocks travel even when the device is the CPU (the tests use it to run
    the GPU path's copies, prefetches and write-backs on a machine without a GPU)."""

    def __init__(self, folder: str | Path | None = None, device: torch.device | str = "cpu", always_copy: bool = False):
        self.store = TensorStore("disk", torch.device("cpu"), parent=folder, label="offloaded weights")
        self.device = torch.device(device)
        self.always_copy = always_copy
        self._mine: set[int] = set()  # data pointers of the storages this offload created
        self._homes: dict[int, Tensor] = {}  # id(tensor) -> its file-backed data while it is on the device
        self._onloaded: dict[int, tuple[int, int]] = {}  # id(tensor) -> (data pointer, version) of its fresh copy
        self._depth: dict[int, int] = {}  # id(block) -> how many onloads hold it
        self._prefetched: tuple[int, dict[int, tuple[Tensor, int]]] | None = None  # id(block), id(tensor) -> copy, version
        self._staging: _Staging | None = None
        self.bytes = 0
        self.copied_bytes = 0  # file -> device
        self.written_bytes = 0  # device -> file (only tensors that changed)

    @property
    def travels(self) -> bool:
        """Whether blocks are copied to the device for their turn (else they are used in place)."""
        return self.device.type != "cpu" or self.always_copy

    def holds(self, tensor: Tensor) -> bool:
        return tensor.untyped_storage().data_ptr() in self._mine

    @torch.no_grad()
    def adopt(self, module: nn.Module, dtype: torch.dtype | None = None, keep: set[int] | None = None) -> int:
        """Move every large parameter and buffer of ``module`` not yet in a file into one;
        floating parameters are converted to ``dtype`` when given, except those whose id is in
        ``keep`` (buffers such as rotary tables keep theirs, as ``from_pretrained`` does).
        Returns the bytes moved."""
        moved = 0
        converted = _converted(module, keep or set())
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if self.holds(tensor) or id(tensor) in self._homes:
                continue
            source = tensor.to(dtype) if dtype is not None and id(tensor) in converted else tensor
            if source.numel() * source.element_size() < MIN_BYTES:
                tensor.data = source.cpu()
                continue
            mapped = self.store.put(source)
            self._mine.add(mapped.untyped_storage().data_ptr())
            tensor.data = mapped
            moved += mapped.numel() * mapped.element_size()
        self.bytes += moved
        return moved

    def _copies(self, block: nn.Module, ready: dict[int, tuple[Tensor, int]] | None = None) -> dict[int, tuple[Tensor, int]]:
        """Device copies of ``block``'s tensors that are not on the device yet, with each tensor's
        version counter when copied; those in ``ready`` are taken from it unless written since."""
        if self._staging is None:
            self._staging = _Staging(self.device)
        copies: dict[int, tuple[Tensor, int]] = {}
        for tensor in itertools.chain(block.parameters(), block.buffers()):
            if id(tensor) in self._homes or id(tensor) in copies:
                continue
            done = (ready or {}).get(id(tensor))
            if done is not None and done[1] == tensor._version:
                copies[id(tensor)] = done
                continue
            copies[id(tensor)] = (self._staging.copy(tensor.data), tensor._version)
            self.copied_bytes += tensor.numel() * tensor.element_size()
        return copies

    @torch.no_grad()
    def prefetch(self, block: nn.Module) -> None:
        """Start copying ``block``'s tensors to the device, so that its next `onload` finds them
        there; an earlier prefetch not yet used is dropped (only the very next onload may use
        one), and a tensor written in place since its copy is copied again."""
        if not self.travels or self._depth.get(id(block)) or (self._prefetched and self._prefetched[0] == id(block)):
            return
        self._prefetched = (id(block), self._copies(block))

    @torch.no_grad()
    def onload(self, block: nn.Module) -> None:
        """Copy ``block``'s tensors onto the device (nested calls are counted, not repeated)."""
        if not self.travels:
            return
        depth = self._depth.get(id(block), 0)
        self._depth[id(block)] = depth + 1
        if depth:
            return
        prefetched, self._prefetched = self._prefetched, None
        copies = self._copies(block, prefetched[1] if prefetched and prefetched[0] == id(block) else None)
        self._staging.wait(copy for copy, _ in copies.values())
        for tensor in itertools.chain(block.parameters(), block.buffers()):
            copy = copies.pop(id(tensor), None)
            if copy is not None:
                self._homes[id(tensor)] = tensor.data
                tensor.data = copy[0]
                self._onloaded[id(tensor)] = (copy[0].data_ptr(), tensor._version)

    @torch.no_grad()
    def offload(self, block: nn.Module, write_back: bool = False) -> None:
        """Drop the device copies of ``block``; with ``write_back`` first copy those that changed
        (written in place, or replaced) into the files (and move tensors made meanwhile, such as
        masks, into files of their own)."""
        if not self.travels:
            return
        depth = self._depth[id(block)] - 1
        self._depth[id(block)] = depth
        if depth:
            return
        for tensor in itertools.chain(block.parameters(), block.buffers()):
            home = self._homes.pop(id(tensor), None)
            if home is not None:
                fresh = self._onloaded.pop(id(tensor))
                if write_back and fresh != (tensor.data_ptr(), tensor._version):
                    home.copy_(tensor.data)
                    self.written_bytes += home.numel() * home.element_size()
                tensor.data = home

    @contextmanager
    def onloaded(self, block: nn.Module, write_back: bool = False) -> Iterator[nn.Module]:
        """Hold ``block`` on the device; with ``write_back`` its changed weights and any new
        tensors (masks) go to the files afterwards."""
        self.onload(block)
        try:
            yield block
        finally:
            self.offload(block, write_back)
            if write_back:
                self.adopt(block)

    def attach(self, blocks: nn.ModuleList) -> None:
        """Forward hooks bringing each block onto the device for its forward (when blocks travel),
        and prefetching the next block meanwhile."""
        if not self.travels:
            return
        following = dict(zip(map(id, blocks), list(blocks)[1:]))

        def before(module: nn.Module, args: Any) -> None:
            self.onload(module)
            if id(module) in following:
                self.prefetch(following[id(module)])

        for block in blocks:
            block.register_forward_pre_hook(before)
            block.register_forward_hook(lambda module, args, output: self.offload(module), always_call=True)

    def close(self) -> None:
        """Stop the copies. The files were unlinked as soon as they were mapped, so their disk
        space returns when the tensors are freed, and a killed job leaves nothing behind."""
        self._prefetched = None
        if self._staging is not None:
            self._staging.close()
        self.store.close()


def offload_to_disk(model: nn.Module, folder: str | Path | None = None, dtype: torch.dtype | None = None,
                    device: torch.device | str = "cpu", always_copy: bool = False) -> DiskOffload:
    """Move ``model``'s large tensors into memory-mapped files under ``folder`` (default: the
    scratch folder, see `storage.scratch_dir`) and remember the offload on the model. With a
    ``device`` other than the CPU only the decoder blocks go to files (each comes onto the device
    for its turn); the rest of the model moves to the device."""
    bound_heap()
    offload = DiskOffload(folder, device, always_copy)
    blocks = find_blocks(model)
    keep = _kept_in_float32(model)
    if offload.device.type == "cpu":
        moved = offload.adopt(model, dtype, keep)
    else:
        moved = sum(offload.adopt(block, dtype, keep) for block in blocks)
        in_blocks = {id(t) for block in blocks for t in itertools.chain(block.parameters(), block.buffers())}
        converted = _converted(model, keep)
        with torch.no_grad():
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                if id(tensor) not in in_blocks:
                    tensor.data = tensor.data.to(device=offload.device, dtype=dtype if id(tensor) in converted else None)
    offload.attach(blocks)
    model.__dict__["_msp_offload"] = offload  # plain attribute: not a submodule, not saved
    log.info("offloaded %.2f GB of weights to %s%s", moved / 1e9, offload.store.folder,
             f"; blocks run on {offload.device} one at a time" if offload.travels else "")
    return offload


def _converted(module: nn.Module, keep: set[int]) -> set[int]:
    """Ids of the tensors a dtype change applies to: floating parameters not in ``keep`` (buffers
    such as rotary tables keep their dtype, as ``from_pretrained`` leaves them)."""
    return {id(p) for p in module.parameters() if p.is_floating_point() and id(p) not in keep}


def _kept_in_float32(model: nn.Module) -> set[int]:
    """Ids of the parameters transformers keeps in float32 whatever the dtype asked for
    (``_keep_in_fp32_modules``), so an offloaded model matches one loaded in that dtype."""
    names = set(getattr(model, "_keep_in_fp32_modules", None) or []) | set(
        getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    return {id(p) for name, p in model.named_parameters() if any(n in name.split(".") for n in names)}


def offload_of(model: nn.Module) -> DiskOffload | None:
    """The model's `DiskOffload`, or None when its weights are in memory."""
    return model.__dict__.get("_msp_offload")


def release(model: nn.Module) -> None:
    """Forget the model's offload, if it has one (its tensors stay readable; their unlinked files'
    disk space returns when they are freed)."""
    offload = model.__dict__.pop("_msp_offload", None)
    if offload is not None:
        offload.close()
