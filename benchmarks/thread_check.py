"""Does the number of CPU threads change a pruned model, or only the time it takes?

    python benchmarks/thread_check.py          # smollm2-135m, uniform 3:4, quick data (8 x 512
                                               # calibration, 8 evaluation windows), 1 and 2 threads

Prunes the same dense model with the same calibration at each thread count and compares the
pruning decisions (the installed N:M masks) and the held-out perplexity. Score-based criteria rank
weights by element-wise scores; SparseGPT sums a Hessian and inverts it, so BLAS reduction order
(which depends on the thread count) can flip near-tied decisions, and the sequential weight update
carries each flip into the blocks after it. Writes benchmarks/results/thread_check.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path

import torch
from torch import Tensor

from msp_callback.atomic_files import atomic_write_text
from msp_callback.evaluate import perplexity_report
from msp_callback.job import PruneSettings, prepare
from msp_callback.models import find_blocks, named_block_linears
from msp_callback.nm import mask_of
from msp_callback.plan import SparsityPlan, nm_string, parse_nm
from msp_callback.pruner import prune

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("thread_check")


def pruned_mask(model: torch.nn.Module) -> Tensor:
    """One flat bool tensor: which weights of the prunable linears the installed masks prune."""
    masks = [(mask_of(lin), lin.weight.numel()) for lin in named_block_linears(model).values()]
    return torch.cat([~mask.flatten() if mask is not None else torch.zeros(size, dtype=torch.bool)
                      for mask, size in masks])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--criteria", nargs="+", default=["wanda", "sparsegpt"])
    p.add_argument("--sparsity", default="3:4")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n, m = parse_nm(args.sparsity)
    settings = PruneSettings(model=args.model, calib_samples=8, calib_seqlen=512, eval_windows=8, seed=args.seed)
    inputs = prepare(settings)
    restore = inputs.dense_snapshot()
    runs = []
    for criterion in args.criteria:
        reference: Tensor | None = None
        for threads in args.threads:
            torch.set_num_threads(threads)
            prune(inputs.model, SparsityPlan(m, n, [n] * len(find_blocks(inputs.model)), criterion, "uniform"),
                  inputs.calibration, progress=False)
            mask = pruned_mask(inputs.model)
            report = perplexity_report(inputs.model, inputs.windows, desc=f"{criterion}, {threads} threads")
            reference = mask if reference is None else reference
            runs.append({"criterion": criterion, "threads": threads, "ppl": report.perplexity,
                         "ppl_interval": report.interval(),
                         "decisions_differing_from_first": int((mask != reference).sum()),
                         "weights": int(mask.numel())})
            log.info("%s, %d threads: ppl %.2f, %d decisions differ from %d threads", criterion, threads,
                     report.perplexity, runs[-1]["decisions_differing_from_first"], args.threads[0])
            restore()
    result = {"command": " ".join(["python", "benchmarks/thread_check.py", *sys.argv[1:]]),
              "arguments": vars(args), "model": args.model, "sparsity": nm_string(n, m),
              "calib": f"{settings.calib_samples} x {settings.calib_seqlen} tokens of {settings.calib_corpus}",
              "eval_tokens": int(inputs.windows.numel()), "machine": f"{platform.machine()}, torch {torch.__version__}",
              "runs": runs}
    out = RESULTS / "thread_check.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
