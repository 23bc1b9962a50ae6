"""What pruning did to a model, read as text: a short greedy continuation of one fixed prompt
after each stage (dense, pruned, recovered, ...), so the stages can be compared side by side."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from .models import input_device
from .offload import offload_of

log = logging.getLogger(__name__)

PROMPT = "The capital of France is"
NEW_TOKENS = 24


@torch.no_grad()
def continuation(model: nn.Module, tokenizer: Any, prompt: str = PROMPT, new_tokens: int = NEW_TOKENS,
                 bos_id: int | None = None) -> str:
    """The text ``model`` adds to ``prompt`` in ``new_tokens`` greedy steps (cached decoding; fewer
    when it ends the text). ``bos_id`` starts the input, as the job's windows do."""
    ids = ([] if bos_id is None else [bos_id]) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([ids], device=input_device(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                             min_new_tokens=0, do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad,
                             temperature=None, top_p=None, top_k=None)
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


class Samples:
    """Continuations of `PROMPT` by stage, logged as they are taken. A model whose blocks are
    offloaded to disk is not sampled (each new token would read every block from its files): one
    log line says so and `texts` stays empty."""

    def __init__(self, tokenizer: Any, bos_id: int | None = None, model: nn.Module | None = None) -> None:
        self.tokenizer, self.bos_id = tokenizer, bos_id
        self.texts: dict[str, str] = {}
        self.seconds = 0.0
        self.skipped = model is not None and offload_of(model) is not None
        if self.skipped:
            log.info("no sample continuations: the model is offloaded to disk, and each new token would read every "
                     "block from the files")

    def take(self, stage: str, model: nn.Module) -> None:
        """Continue the prompt with ``model`` as it is after ``stage``."""
        if self.skipped:
            return
        started = time.perf_counter()
        self.texts[stage] = continuation(model, self.tokenizer, bos_id=self.bos_id)
        self.seconds += time.perf_counter() - started
        log.info("%s continues %r with %r", stage, PROMPT, self.texts[stage])

    def result(self) -> dict[str, Any]:
        """The JSON entries: ``sample_prompt``, ``samples`` ({stage: continuation}) and the seconds
        they took; none when skipped."""
        if self.skipped:
            return {}
        return {"sample_prompt": PROMPT, "samples": dict(self.texts), "sample_seconds": self.seconds}
