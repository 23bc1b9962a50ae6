"""Dense and uniform N:M perplexity of a model for each criterion, measured in one run.

    python benchmarks/baselines.py                      # smollm2-135m, 2:4 and 3:4, all criteria
    python benchmarks/baselines.py --sparsities 3:4 --criteria wanda --eval-windows 8

Writes benchmarks/results/baselines.json and prints a markdown table. Every pruned model starts
from the same dense weights, calibration samples and evaluation windows.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from msp_callback.atomic_files import atomic_write_text
from msp_callback.evaluate import perplexity
from msp_callback.job import PruneSettings, prepare
from msp_callback.models import fingerprint, measure_sparsity
from msp_callback.plan import SparsityPlan, nm_string, parse_nm
from msp_callback.pruner import prune

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    d = PruneSettings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=d.model)
    p.add_argument("--sparsities", nargs="+", default=["2:4", "3:4"])
    p.add_argument("--criteria", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--calib-samples", type=int, default=d.calib_samples)
    p.add_argument("--calib-seqlen", type=int, default=d.calib_seqlen)
    p.add_argument("--eval-seqlen", type=int, default=d.eval_seqlen)
    p.add_argument("--eval-windows", type=int, default=d.eval_windows)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "baselines.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = PruneSettings(model=args.model, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
                             eval_seqlen=args.eval_seqlen, eval_windows=args.eval_windows, seed=args.seed)
    inputs = prepare(settings)
    model, calibration, windows = inputs.model, inputs.calibration, inputs.windows
    restore = inputs.dense_snapshot()

    rows = [{"criterion": "dense", "sparsity": "0%", "ppl": perplexity(model, windows, desc="dense")}]
    for sparsity in args.sparsities:
        n, m = parse_nm(sparsity)
        for criterion in args.criteria:
            plan = SparsityPlan.uniform(n, m, fingerprint(model)["num_blocks"],
                                        criterion=criterion, fingerprint=fingerprint(model))
            t0 = time.perf_counter()
            prune(model, plan, calibration)
            seconds = time.perf_counter() - t0
            rows.append({"criterion": criterion, "sparsity": nm_string(n, m), "ppl": perplexity(model, windows, desc=criterion),
                         "prune_seconds": seconds, "measured_sparsity_pct": measure_sparsity(model).pruned_linears})
            logging.info("%s", rows[-1])
            restore()

    result = {
        "command": " ".join(["python", "benchmarks/baselines.py", *sys.argv[1:]]),
        "arguments": vars(args),
        "model": settings.model, "calib_corpus": settings.calib_corpus, "eval_corpus": settings.eval_corpus,
        "calib_samples": settings.calib_samples, "calib_seqlen": settings.calib_seqlen,
        "eval_windows": int(windows.shape[0]), "eval_seqlen": int(windows.shape[1]), "eval_tokens": int(windows.numel()),
        "seed": settings.seed, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "rows": rows,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(markdown_table(result))


def markdown_table(result: dict) -> str:
    lines = ["| criterion | sparsity | perplexity |", "|---|---|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['criterion']} | {r['sparsity']} | {r['ppl']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
