"""MSP against uniform / OWL / Fisher allocations in one run, with the search's cost.

    python benchmarks/msp_search.py                 # the issue's setting: smollm2-135m, wanda, 3:4,
                                                    # 32 x 1024 C4 calibration, 40 x 1024 Wikipedia
    python benchmarks/msp_search.py --quick         # smaller calibration and evaluation, 20 x 14 search:
                                                    # 18.4 min for Wanda on the idle 2-core machine
    python benchmarks/msp_search.py --replay benchmarks/results/msp_search.json --name replay
                                                    # re-prune each recorded plan (no search) and
                                                    # re-evaluate with the recorded settings

Every allocation starts from the same dense weights, calibration samples, fitness windows and
evaluation windows. Each held-out perplexity is kept with its windows' NLLs and a 95% bootstrap
interval over windows (the evaluation's sampling noise). Also measured side by side: one fitness evaluation of the fast path (level
cache + block prefix cache) against the naive one (re-prune sequentially + full forward) on the
same individuals, and against one plain forward pass over the same tokens. Writes
benchmarks/results/<name>.json plus level and convergence plots beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from msp_callback.allocation import make_plan
from msp_callback.atomic_files import atomic_write_text
from msp_callback.evaluate import perplexity, perplexity_report
from msp_callback.job import PruneSettings, prepare
from msp_callback.models import fingerprint, measure_sparsity
from msp_callback.plan import SparsityPlan, nm_string, parse_nm
from msp_callback.plots import plot_convergence, plot_levels
from msp_callback.pruner import prune
from msp_callback.search.evolution import sensitivity_population
from msp_callback.search.fitness import PerplexityFitness
from msp_callback.search.level_cache import LevelCache
from msp_callback.search.runner import SearchSettings

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("msp_search")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--criterion", nargs="+", default=["wanda"],
                   help="one or more criteria: one run shares the model, data and dense evaluation; one JSON each")
    p.add_argument("--sparsity", default="3:4")
    p.add_argument("--allocations", nargs="+", default=["uniform", "owl", "fisher", "msp"])
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seqlen", type=int, default=1024)
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--fitness-samples", type=int, default=4)
    p.add_argument("--fitness-seqlen", type=int, default=512)
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--init", default="sensitivity")
    p.add_argument("--trace-samples", type=int, default=8, help="calibration rows used for Fisher traces")
    p.add_argument("--naive-individuals", type=int, default=2, help="individuals timed naively (0: skip)")
    p.add_argument("--no-cost", action="store_true", help="skip the fitness-cost measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="preset: 8 x 512 calibration, 8 eval windows, 20 x 14 search (the fitness split is the "
                        "full setting's); options given explicitly override it")
    p.add_argument("--name", nargs="+", default=None,
                   help="result file name per criterion (default: msp_search[_quick], _<criterion> after the first)")
    p.add_argument("--replay", type=Path, default=None,
                   help="a result JSON: take its settings and each row's levels instead of planning")
    args = p.parse_args()
    if args.replay:
        recorded = json.loads(args.replay.read_text())
        replay_rows = {row["allocation"]: row["levels"] for row in recorded["rows"]}
        missing = sorted(set(vars(args)) - set(recorded["arguments"]) - {"name", "replay", "no_cost", "criterion"})
        if missing:
            log.warning("%s does not record %s: using today's defaults for those", args.replay, ", ".join(missing))
        keep = {"name": (args.name or [f"{args.replay.stem}_replay"])[:1], "replay": args.replay, "no_cost": True}
        vars(args).update({k: v for k, v in recorded["arguments"].items() if k in vars(args)}, **keep)
        args.criterion = [recorded["criterion"]]
        args.allocations, args.replay_levels, args.quick = list(replay_rows), replay_rows, False
        return args
    if args.quick:  # a preset of defaults: options given on the command line win
        p.set_defaults(calib_samples=8, calib_seqlen=512, eval_windows=8, population=20, generations=14,
                       naive_individuals=1)
        args = p.parse_args()
    base = "msp_search_quick" if args.quick else "msp_search"
    args.name = args.name or [base] + [f"{base}_{c}" for c in args.criterion[1:]]
    if len(args.name) != len(args.criterion):
        p.error(f"--name needs one name per criterion ({len(args.criterion)}), got {len(args.name)}")
    return args


def scored(model, windows, desc: str) -> dict:
    """Held-out perplexity with its 95% bootstrap interval over windows and the window NLLs."""
    report = perplexity_report(model, windows, desc=desc)
    return {"ppl": report.perplexity, "ppl_interval": report.interval(), "window_nll": report.window_nll}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n, m = parse_nm(args.sparsity)
    settings = PruneSettings(model=args.model, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
                             eval_windows=args.eval_windows, eval_seqlen=args.eval_seqlen, seed=args.seed,
                             fitness_samples=args.fitness_samples, fitness_seqlen=args.fitness_seqlen)
    inputs = prepare(settings)
    model, calibration, windows = inputs.model, inputs.calibration, inputs.windows
    restore = inputs.dense_snapshot()

    dense = perplexity_report(model, windows, desc="dense")
    search = SearchSettings(search="paper", fitness="ppl", population=args.population, generations=args.generations,
                            init=args.init)
    trace_rows = torch.cat(list(calibration))[: args.trace_samples]
    traces = None
    if not args.replay and ("fisher" in args.allocations or args.init == "trace"):
        from msp_callback.sensitivity import fisher_traces

        result, trace_seconds = timed(lambda: fisher_traces(model, [trace_rows]))
        traces = result.block_traces
        log.info("fisher traces in %.0f s", trace_seconds)

    owl: dict = {}  # OWL's levels come from Wanda-style outlier ratios whatever the criterion: plan once
    for criterion, name in zip(args.criterion, args.name):
        cell = argparse.Namespace(**{**vars(args), "criterion": criterion, "name": name})
        run_cell(cell, n, m, settings, inputs, restore, dense, search, traces, owl)


def run_cell(args, n, m, settings, inputs, restore, dense, search, traces, owl: dict) -> None:
    """Every allocation for one criterion; writes <name>.json and its plots."""
    model, calibration, windows, fitness_windows = inputs.model, inputs.calibration, inputs.windows, inputs.fitness_windows
    rows = []
    for allocation in args.allocations:
        if args.replay:
            plan, plan_seconds = SparsityPlan(m, n, args.replay_levels[allocation], args.criterion, allocation), 0.0
        elif allocation == "owl" and owl:
            plan, plan_seconds = SparsityPlan(m, n, owl["levels"], args.criterion, "owl"), 0.0
        else:
            plan, plan_seconds = timed(lambda: make_plan(allocation, model, n, m, args.criterion, calibration=calibration,
                                                         fitness_windows=fitness_windows, search=search,
                                                         seed=args.seed, traces=traces))
        if allocation == "owl" and not owl:
            owl.update(levels=plan.levels, criterion=args.criterion)
        _, prune_seconds = timed(lambda: prune(model, plan, calibration))
        row = {"allocation": allocation, "levels": plan.levels, **scored(model, windows, allocation),
               "plan_seconds": plan_seconds, "prune_seconds": prune_seconds,
               "measured_sparsity_pct": measure_sparsity(model).pruned_linears}
        if allocation == "owl" and owl["criterion"] != args.criterion:
            row["plan_shared_with"] = owl["criterion"]  # same levels, planned once in this run
        for key in ("fitness_evaluations", "level_cache_seconds", "search_seconds", "best_fitness", "history"):
            if key in plan.metadata:
                row[key] = plan.metadata[key]
        rows.append(row)
        log.info("%s %s: ppl %.2f, levels %s", args.criterion, allocation, row["ppl"], plan.levels)
        restore()

    cost = None if args.no_cost else measure_fitness_cost(model, n, m, args, calibration, fitness_windows, restore)
    result = {
        "command": " ".join(["python", "benchmarks/msp_search.py", *sys.argv[1:]]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "replay_levels"},
        "model": args.model, "criterion": args.criterion, "sparsity": nm_string(n, m),
        "calib_corpus": settings.calib_corpus, "eval_corpus": settings.eval_corpus,
        "eval_tokens": int(windows.numel()), "fitness_tokens": int(fitness_windows.numel()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "dense_ppl": dense.perplexity, "dense_ppl_interval": dense.interval(), "traces": traces, "rows": rows,
        "fitness_cost": cost,
    }
    out = RESULTS / f"{args.name}.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    plot_levels({r["allocation"]: r["levels"] for r in rows}, m, RESULTS / f"{args.name}_levels.png",
                title=f"{args.model}, {args.criterion}, {nm_string(n, m)}")
    for r in rows:
        if "history" in r:
            plot_convergence(r["history"], RESULTS / f"{args.name}_convergence.png",
                             title=f"MSP search, {args.model}, {args.criterion}, {nm_string(n, m)}")
    log.info("wrote %s", out)


def measure_fitness_cost(model, n, m, args, calibration, fitness_windows, restore) -> dict:
    """Seconds per fitness evaluation: fast path vs naive (re-prune + full forward) on the same
    individuals, and one plain forward over the same tokens; medians."""
    num_blocks = fingerprint(model)["num_blocks"]
    individuals = sensitivity_population(max(3, args.naive_individuals), num_blocks, n, m, random.Random(args.seed + 7))
    plain = [timed(lambda: perplexity(model, fitness_windows, 4, progress=False))[1] for _ in range(3)]
    cache, cache_seconds = timed(lambda: LevelCache(model, args.criterion, m, calibration))
    fitness = PerplexityFitness(model, cache, fitness_windows, 4)
    fast = [timed(lambda ind=ind: fitness([ind]))[1] for ind in individuals]
    cache.restore_dense()
    naive = []
    for ind in individuals[: args.naive_individuals]:
        plan = SparsityPlan(m=m, target=n, levels=ind, criterion=args.criterion, allocation="naive-timing")
        naive.append(timed(lambda: (prune(model, plan, calibration, progress=False),
                                    perplexity(model, fitness_windows, 4, progress=False)))[1])
        restore()
    cost = {"plain_forward_s": statistics.median(plain), "fast_eval_s": statistics.median(fast),
            "fast_eval_all_s": fast, "level_cache_build_s": cache_seconds, "individuals": individuals}
    if naive:
        cost["naive_eval_s"] = statistics.median(naive)
        cost["naive_over_fast"] = cost["naive_eval_s"] / cost["fast_eval_s"]
    return cost


if __name__ == "__main__":
    main()
