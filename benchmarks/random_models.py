"""Llama-shaped models with random weights, saved once as transformers folders in the user cache.

Memory and time of the pipeline depend on shapes, not on trained weights, so these stand in for
real 0.5B-1B checkpoints where no model hub is reachable (perplexities of such models say nothing
about quality). Each folder holds SmolLM2-135M's tokenizer (vocabulary 49,152), so the job runs on
real text unchanged. ``135m`` has SmolLM2-135M's shape.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SHAPES = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3),
    "0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
}


def random_model_folder(size: str, seed: int = 0) -> Path:
    """The folder of the random ``size`` model (built and saved in float32 on first use)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from msp_callback.loading import resolve_model_path
    from msp_callback.packaged import cache_dir

    folder = cache_dir() / "random-models" / f"llama-{size}-seed{seed}"
    if (folder / "config.json").exists():
        return folder
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    torch.manual_seed(seed)
    config = LlamaConfig(**SHAPES[size], vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
                         rope_theta=100000.0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(staging, max_shard_size="1GB")
    tokenizer_source = Path(resolve_model_path("smollm2-135m"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_source / name, staging / name)
    staging.rename(folder)
    return folder


def block_parameters(folder: Path) -> tuple[int, int]:
    """(all parameters, block-linear parameters) of a saved Llama folder, from its config."""
    import json

    c = json.loads((folder / "config.json").read_text())
    h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = c["num_key_value_heads"] * (h // c["num_attention_heads"])
    block = 2 * h * h + 2 * h * kv + 3 * h * i
    norms = layers * 2 * h + h
    return block * layers + c["vocab_size"] * h + norms, block * layers
