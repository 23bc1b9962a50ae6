"""Tiny randomly initialised causal LMs of several architectures, built offline."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    Qwen2Config,
)

# Tiny models run ~100x faster on one thread than on two busy ones; tests on the real model
# raise it again (see test_real_model.py).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _scratch_in_tmp(tmp_path_factory, monkeypatch):
    """Memory-mapped working files of every test go to a temporary folder, not the user cache."""
    monkeypatch.setenv("MSP_SCRATCH", str(tmp_path_factory.getbasetemp() / "scratch"))


VOCAB = 128
HIDDEN = 64
INTER = 128


def _configs():
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return {
        "llama": LlamaConfig(**common),
        "qwen2": Qwen2Config(**common),
        "gemma3": Gemma3TextConfig(**common, head_dim=16, sliding_window=8),
        "opt": OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=INTER, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=HIDDEN),
        "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=3, n_head=4, n_positions=128),
    }


ARCHITECTURES = list(_configs())


def _gemma3_mixed():
    """Gemma3 with a global layer between sliding ones (window 8): blocks receive different
    attention masks and rotary tables, so block 0's call arguments do not fit every block."""
    return Gemma3TextConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, head_dim=16,
                            sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"])


def tiny_model(arch: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    config = _gemma3_mixed() if arch == "gemma3_mixed" else _configs()[arch]
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config)
    return model.eval()


@pytest.fixture
def llama():
    return tiny_model("llama")


def token_batches(num: int = 4, seqlen: int = 16, batch: int = 1, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seqlen), generator=gen) for _ in range(num)]
