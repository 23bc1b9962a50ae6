"""Prune SmolLM2-135M to mixed 3:4 (75%) with MSPCallback at the start of fit, finetune sparse on C4
windows, and report held-out Wikipedia perplexity at each step.

    python examples/lightning_prune_then_finetune.py            # small settings: a few minutes on 2 cores
    python examples/lightning_prune_then_finetune.py --steps 50 --generations 10
"""

import argparse
import logging

import lightning.pytorch as pl

from msp_callback import MSPCallback, data
from msp_callback.integrations.lightning_lm import CausalLM, TextDataModule
from msp_callback.models import measure_sparsity


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", default="3:4")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--eval-windows", type=int, default=8)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pl.seed_everything(0)

    module, datamodule = CausalLM("smollm2-135m", lr=2e-5), TextDataModule(samples=128, seqlen=256, batch_size=4)
    windows = data.evaluation_windows(data.tokenize(module.tokenizer, data.load_corpus("wikipedia")), 512, args.eval_windows)
    dense = module.perplexity(windows)

    msp = MSPCallback(sparsity=args.sparsity, allocation="msp", when="fit_start", calib_samples=16,
                      population=args.population, generations=args.generations,
                      reconstruct_epochs=0)  # the plain prune with the search (the default, 4, reconstructs instead)

    class Report(pl.Callback):  # perplexity right after pruning, before any training step
        def on_train_start(self, trainer, pl_module):
            self.pruned = pl_module.perplexity(windows)

    report = Report()
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         callbacks=[msp, report], gradient_clip_val=1.0)
    trainer.fit(module, datamodule)
    finetuned = module.perplexity(windows)
    print(f"plan levels: {msp.plan.levels}")
    print(f"measured sparsity of the block linears: {measure_sparsity(module.model).pruned_linears:.2f}%")
    print(f"perplexity ({windows.numel()} Wikipedia tokens): dense {dense:.2f}, pruned {report.pruned:.2f}, "
          f"after {args.steps} sparse finetuning steps {finetuned:.2f}")


if __name__ == "__main__":
    main()
