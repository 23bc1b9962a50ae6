"""The model a job saved, read back in a fresh process with plain transformers, as a user reads it.

    python benchmarks/reload_check.py runs/smollm2-135m-3of4-wanda-msp/model

Prints the measured sparsity of the block linears, the perplexity on the default job's evaluation
windows (40 x 1024 held-out Wikipedia tokens, drawn as the job draws them) and the greedy 24-token
continuation of the job's sample prompt, to compare with what the job printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from msp_callback.evaluate import perplexity
    from msp_callback.job import PruneSettings, prepare
    from msp_callback.models import measure_sparsity

    folder = sys.argv[1]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()  # no msp-callback needed to read it
    tokenizer = AutoTokenizer.from_pretrained(folder)
    print(f"pruned linears: {measure_sparsity(model).pruned_linears:.2f}%")
    windows = prepare(PruneSettings(progress=False), loaded=(model, tokenizer)).windows
    print(f"perplexity: {perplexity(model, windows, progress=False)!r}")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    print(repr(tokenizer.decode(model.generate(ids, max_new_tokens=24, do_sample=False)[0])))


if __name__ == "__main__":
    main()
