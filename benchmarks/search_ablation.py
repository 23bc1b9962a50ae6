"""Search ablations (paper Figures 4-5): initialisation, population size, mutation rate, fitness.

    python benchmarks/search_ablation.py                        # every study, one seed
    python benchmarks/search_ablation.py --studies init --seeds 0 1 2

Every run shares one model, one level cache, the same fitness windows and the same held-out
windows; only the search setting under study differs from the baseline (sensitivity init,
perplexity fitness, population 10, mutation rate 0.5, single fidelity). Each run's best plan is then pruned
properly (sequentially, with the criterion) and evaluated on held-out text, with a 95% bootstrap
interval over windows. Population sizes are compared at the same number of generations, so the
larger population spends more evaluations; the convergence plots' x axis is the cost in
full-evaluation units for that reason (a multi-fidelity screen on one of four windows costs 1/4).
With screening, the population mean counts only the fully scored individuals. Writes
benchmarks/results/<name>.json and one convergence plot per study.
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
from msp_callback.evaluate import perplexity_report
from msp_callback.job import PruneSettings, prepare
from msp_callback.models import fingerprint
from msp_callback.plan import SparsityPlan, nm_string, parse_nm
from msp_callback.plots import plot_convergence
from msp_callback.pruner import prune
from msp_callback.search.evolution import EvolutionarySearch
from msp_callback.search.fidelity import CostMeter, MultiFidelityEvaluate
from msp_callback.search.fitness import FITNESSES
from msp_callback.search.level_cache import LevelCache
from msp_callback.sensitivity import fisher_traces

RESULTS = Path(__file__).parent / "results"
BASELINE = {"init": "sensitivity", "fitness": "ppl", "population": 10, "mutation_rate": 0.5, "fidelity": "single"}
STUDIES = {  # study -> the values of its one setting; the baseline value is part of each study
    "init": ("init", ["random", "sensitivity", "trace"]),
    "population": ("population", [4, 10, 20]),
    "mutation": ("mutation_rate", [0.1, 0.5, 0.9]),
    "fitness": ("fitness", ["ppl", "kl"]),
    # multi: new individuals screened on 1 fitness window, the better half scored on all (search.fidelity)
    "fidelity": ("fidelity", ["single", "multi"]),
}


def study_settings(studies: list[str]) -> list[dict]:
    """Distinct search settings the chosen studies need (the baseline is run once)."""
    settings: list[dict] = []
    for study in studies:
        key, values = STUDIES[study]
        for value in values:
            setting = dict(BASELINE, **{key: value})
            if setting not in settings:
                settings.append(setting)
    return settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--criterion", default="wanda")
    p.add_argument("--sparsity", default="3:4")
    p.add_argument("--studies", nargs="+", choices=list(STUDIES), default=list(STUDIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="search seeds (data stay fixed)")
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--calib-samples", type=int, default=8)
    p.add_argument("--calib-seqlen", type=int, default=1024)
    p.add_argument("--fitness-samples", type=int, default=4)
    p.add_argument("--fitness-seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--name", default="search_ablation")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n, m = parse_nm(args.sparsity)
    inputs = prepare(PruneSettings(model=args.model, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
                                   fitness_samples=args.fitness_samples, fitness_seqlen=args.fitness_seqlen,
                                   eval_windows=args.eval_windows, progress=False))
    model, restore = inputs.model, inputs.dense_snapshot()
    settings = study_settings(args.studies)
    traces = fisher_traces(model, inputs.calibration).block_traces if any(s["init"] == "trace" for s in settings) else None
    cache = LevelCache(model, args.criterion, m, inputs.calibration)
    runs = []
    for setting in settings:
        for seed in args.seeds:
            start = time.perf_counter()
            # a fresh fitness per run: a fitness's block-prefix cache follows only its own evaluations
            fitness = FITNESSES[setting["fitness"]](model, cache, inputs.fitness_windows)
            evaluate = fitness
            if setting["fidelity"] == "multi":
                screen = FITNESSES[setting["fitness"]](model, cache, inputs.fitness_windows[:1])
                evaluate = MultiFidelityEvaluate(screen, fitness, 0.5, screen.tokens, fitness.tokens)
            search = EvolutionarySearch(n, m, fingerprint(model)["num_blocks"], population_size=setting["population"],
                                        generations=args.generations, mutation_rate=setting["mutation_rate"],
                                        seed=seed, init=setting["init"], traces=traces,
                                        evaluate=evaluate)
            meter = CostMeter(search, evaluate)
            levels, best = search.run(callback=meter)
            runs.append({**setting, "seed": seed, "levels": levels, "best_fitness": best, "cost": meter.total,
                         "evaluations": search.evaluations, "search_seconds": time.perf_counter() - start,
                         "history": search.history})
            logging.info("%s seed %d: best %.4g after %d evaluations", setting, seed, best, search.evaluations)
    cache.restore_dense()
    for run in runs:
        prune(model, SparsityPlan(m, n, run["levels"], args.criterion, allocation="msp"), inputs.calibration,
              progress=False)
        report = perplexity_report(model, inputs.windows, progress=False)
        run.update(ppl=report.perplexity, ppl_interval=report.interval(), window_nll=report.window_nll)
        restore()
    result = {"command": " ".join(["python", "benchmarks/search_ablation.py", *sys.argv[1:]]), "arguments": vars(args),
              "baseline": BASELINE, "sparsity": nm_string(n, m), "eval_tokens": int(inputs.windows.numel()),
              "fitness_tokens": int(inputs.fitness_windows.numel()), "traces": traces,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "runs": runs}
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(result, indent=2))
    for study in args.studies:
        plot_study(result, study)


def study_runs(result: dict, study: str) -> list[dict]:
    """The runs of one study: the baseline with only the study's setting changed."""
    key, values = STUDIES[study]
    return [r for r in result["runs"] if r[key] in values
            and all(r[k] == v for k, v in result["baseline"].items() if k != key)]


def plot_study(result: dict, study: str) -> Path:
    key, _ = STUDIES[study]
    curves = {f"{key}={r[key]}" + (f" seed {r['seed']}" if len(result["arguments"]["seeds"]) > 1 else ""): r["history"]
              for r in study_runs(result, study)}
    a = result["arguments"]
    return plot_convergence(curves, RESULTS / f"{a['name']}_{study}.png", x="cost",
                            title=f"{a['model']}, {a['criterion']}, {result['sparsity']}: {study}")


if __name__ == "__main__":
    main()
