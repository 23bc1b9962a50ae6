"""Search ablation: initialisation (random / sensitivity / trace) and fitness (ppl / kl).

    python benchmarks/search_ablation.py                       # inits, perplexity fitness
    python benchmarks/search_ablation.py --fitness ppl kl --inits sensitivity

All runs share one model, one level cache and the same fitness windows; only the search differs.
The best plan of each run is then pruned properly (sequentially) and evaluated on held-out text.
Writes benchmarks/results/<name>.json and a convergence plot beside it.
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

from msp_callback.evaluate import perplexity
from msp_callback.files import atomic_write_text
from msp_callback.models import fingerprint
from msp_callback.plan import SparsityPlan, nm_string, parse_nm
from msp_callback.plots import plot_convergence
from msp_callback.pruner import prune
from msp_callback.search.evolution import EvolutionarySearch
from msp_callback.search.fitness import FITNESSES
from msp_callback.search.levels import LevelCache
from msp_callback.sensitivity import fisher_traces
from msp_callback.workflow import PruneSettings, prepare

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--criterion", default="wanda")
    p.add_argument("--sparsity", default="3:4")
    p.add_argument("--inits", nargs="+", default=["random", "sensitivity", "trace"])
    p.add_argument("--fitness", nargs="+", default=["ppl"])
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--fitness-samples", type=int, default=4)
    p.add_argument("--fitness-seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="search_ablation")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n, m = parse_nm(args.sparsity)
    settings = PruneSettings(model=args.model, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
                             fitness_samples=args.fitness_samples, fitness_seqlen=args.fitness_seqlen,
                             eval_windows=args.eval_windows, seed=args.seed)
    inputs = prepare(settings)
    model = inputs.model
    restore = inputs.dense_snapshot()
    traces = fisher_traces(model, inputs.calibration).block_traces if "trace" in args.inits else None
    cache = LevelCache(model, args.criterion, m, inputs.calibration)
    runs = []
    for fitness_name in args.fitness:
        fitness = FITNESSES[fitness_name](model, cache, inputs.fitness_windows)
        for init in args.inits:
            start = time.perf_counter()
            search = EvolutionarySearch(n, m, fingerprint(model)["num_blocks"],
                                        population_size=args.population, generations=args.generations,
                                        seed=args.seed, init=init, traces=traces, evaluate=fitness)
            levels, best = search.run()
            runs.append({"init": init, "fitness": fitness_name, "levels": levels, "best_fitness": best,
                         "evaluations": search.evaluations, "search_seconds": time.perf_counter() - start,
                         "history": search.history})
            logging.info("%s / %s: best %.4g after %d evaluations", init, fitness_name, best, search.evaluations)
    cache.restore_dense()
    for run in runs:
        prune(model, SparsityPlan(m=m, target=n, levels=run["levels"], criterion=args.criterion), inputs.calibration)
        run["ppl"] = perplexity(model, inputs.windows, desc=f"{run['init']}/{run['fitness']}")
        restore()
    result = {"command": " ".join(["python", "benchmarks/search_ablation.py", *sys.argv[1:]]), "arguments": vars(args),
              "sparsity": nm_string(n, m), "eval_tokens": int(inputs.windows.numel()),
              "fitness_tokens": int(inputs.fitness_windows.numel()), "traces": traces,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "runs": runs}
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(result, indent=2))
    plot_convergence({f"{r['init']}/{r['fitness']}": r["history"] for r in runs}, RESULTS / f"{args.name}_convergence.png",
                     title=f"{args.model}, {args.criterion}, {nm_string(n, m)}: initialisations")


if __name__ == "__main__":
    main()
