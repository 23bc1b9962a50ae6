"""Add MSPTrainerCallback to a Hugging Face Trainer: train briefly, prune at the end of training
(the post-training stage) to mixed 3:4, and report held-out Wikipedia perplexity.

    python examples/hf_trainer_prune.py          # small settings: a few minutes on 2 cores
"""

import argparse
import logging
import tempfile

import torch
from transformers import Trainer, TrainingArguments

from msp_callback import MSPTrainerCallback, data
from msp_callback.evaluate import perplexity
from msp_callback.loading import load_causal_lm
from msp_callback.models import measure_sparsity


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", default="3:4")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--eval-windows", type=int, default=8)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    model, tokenizer = load_causal_lm("smollm2-135m")
    c4 = data.tokenize(tokenizer, data.load_corpus("c4"))
    rows = torch.cat(data.sample_calibration(c4, 64, 256, seed=0))
    train = [{"input_ids": r, "labels": r} for r in rows]
    windows = data.evaluation_windows(data.tokenize(tokenizer, data.load_corpus("wikipedia")), 512, args.eval_windows)
    dense = perplexity(model, windows, progress=False)

    msp = MSPTrainerCallback(sparsity=args.sparsity, allocation="msp", when="fit_end", calib_samples=16,
                             population=args.population, generations=args.generations,
                             reconstruct_epochs=0)  # the plain prune with the search (the default, 4, reconstructs)
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, max_steps=args.steps, per_device_train_batch_size=4, learning_rate=2e-5,
                                  report_to=[], save_strategy="no", use_cpu=True, logging_steps=5)
        Trainer(model=model, args=targs, train_dataset=train, callbacks=[msp]).train()
    pruned = perplexity(model, windows, progress=False)
    print(f"plan levels: {msp.plan.levels}")
    print(f"measured sparsity of the block linears: {measure_sparsity(model).pruned_linears:.2f}%")
    print(f"perplexity ({windows.numel()} Wikipedia tokens): dense before training {dense:.2f}, "
          f"after {args.steps} training steps and pruning at train end {pruned:.2f}")


if __name__ == "__main__":
    main()
