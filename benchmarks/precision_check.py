"""The job in bfloat16 against float32: perplexities with bootstrap intervals, and stage times.

    python benchmarks/precision_check.py                    # smollm2-135m, wanda 2:4 uniform
    python benchmarks/precision_check.py --sparsity 3:4 --allocation msp --population 6 --generations 3

Each precision runs in a fresh process on the same settings (same calibration, fitness and
evaluation tokens): load in that dtype, dense perplexity, plan, prune, pruned perplexity. The
perplexities come with 95% percentile bootstrap intervals over the evaluation windows
(`evaluate.PerplexityReport.interval`). This CPU has no bf16 units, so bf16 is slower here; on a
GPU it is the default. Writes results/precision_check.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results"

from fresh_process import emit, run_fresh  # noqa: E402


def one(args: argparse.Namespace, dtype: str) -> dict:
    import torch

    from msp_callback.allocation import make_plan
    from msp_callback.config import SearchSettings, extract
    from msp_callback.evaluate import perplexity_report
    from msp_callback.job import PruneSettings, prepare
    from msp_callback.plan import parse_nm
    from msp_callback.pruner import prune

    settings = PruneSettings(dtype=dtype, sparsity=args.sparsity, criterion=args.criterion, allocation=args.allocation,
                             calib_samples=args.calib_samples, eval_windows=args.eval_windows,
                             population=args.population, generations=args.generations, progress=False)
    seconds: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - start, 1)
        return out

    inputs = timed("load", lambda: prepare(settings))
    model = inputs.model

    def report(name):
        r = timed(name, lambda: perplexity_report(model, inputs.windows, progress=False))
        low, high = r.interval()
        return {"perplexity": r.perplexity, "interval": [low, high]}

    dense = report("dense perplexity")
    n, m = parse_nm(settings.sparsity)
    plan = timed("plan", lambda: make_plan(settings.allocation, model, n, m, settings.criterion,
                                           calibration=inputs.calibration, fitness_windows=inputs.fitness_windows,
                                           search=extract(settings, SearchSettings), seed=settings.seed, progress=False))
    timed("prune", lambda: prune(model, plan, inputs.calibration, progress=False))
    pruned = report("pruned perplexity")
    return {"dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "dense": dense, "pruned": pruned,
            "levels": plan.levels, "seconds": seconds, "eval_tokens": int(inputs.windows.numel()),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", default="2:4")
    p.add_argument("--criterion", default="wanda")
    p.add_argument("--allocation", default="uniform")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--population", type=int, default=6)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--name", default="precision_check")
    p.add_argument("--one", choices=("float32", "bfloat16"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        emit(one(args, args.one))
        return
    runs = {}
    for dtype in ("float32", "bfloat16"):
        result = run_fresh(__file__, ["--one", dtype] + sys.argv[1:], dtype)
        if result is None:
            sys.exit(1)
        runs[dtype] = result
        print(dtype, runs[dtype]["dense"], runs[dtype]["pruned"], runs[dtype]["seconds"], flush=True)
    fp32, bf16 = runs["float32"], runs["bfloat16"]
    within = {k: fp32[k]["interval"][0] <= bf16[k]["perplexity"] <= fp32[k]["interval"][1] for k in ("dense", "pruned")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"command": "python benchmarks/precision_check.py " + " ".join(sys.argv[1:]), "model": "smollm2-135m",
         "criterion": args.criterion, "sparsity": args.sparsity, "allocation": args.allocation,
         "calibration": f"{args.calib_samples} x 512 tokens of c4",
         "evaluation": f"{args.eval_windows} x 1024 tokens of held-out wikipedia",
         "machine": platform.machine(), "runs": runs, "bf16_within_fp32_interval": within,
         "same_levels": fp32["levels"] == bf16["levels"]}, indent=2))
    print("bf16 inside the fp32 interval:", within)


if __name__ == "__main__":
    main()
