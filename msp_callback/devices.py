"""Where a job runs and in what precision: ``--device`` and ``--dtype``.

Defaults follow the machine: CUDA when it is there, else the CPU; bfloat16 weights on a GPU with
fast bfloat16 (Ampere and later), float32 elsewhere (a CPU without bf16 units runs bf16 several
times slower; one with AMX-BF16 can run it faster: ``--dtype bf16`` there). Statistics,
Hessians, Fisher sums and perplexities accumulate in float32 / float64 whatever the weights'
precision (see the criteria, `sensitivity` and `evaluate`).
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device this machine does not have."""


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a device this machine has (None: CUDA when available, else the CPU)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device (--device) {name!r} is not a device name: use cuda, cuda:N, cpu or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device (--device) {name!r}: CUDA is not available here (torch {torch.__version__}); "
                              "use --device cpu, or install a CUDA build of torch on a machine with a GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device (--device) {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device (--device) {name!r}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device (--device) {name!r}: msp-callback runs on cuda, cpu or mps")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The weights' dtype: ``auto`` is bfloat16 on a CUDA device with bf16 units (compute
    capability 8.0 and up: Ampere, Hopper, ...), else float32. (``torch.cuda.is_bf16_supported()``
    also says yes where bf16 is only emulated, as on a T4 or V100, and asks the current device,
    not ``device``.)"""
    if name == "auto":
        fast_bf16 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
        return torch.bfloat16 if fast_bf16 else torch.float32
    return DTYPES[name]
