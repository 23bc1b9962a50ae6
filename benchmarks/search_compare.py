"""The paper's search against the level-switch search at one fitness-token budget, over seeds.

    python benchmarks/search_compare.py          # wanda 3:4, sparsegpt 3:4, wanda 2:4; seeds 0 1 2; both searches
    python benchmarks/search_compare.py --configs wanda:3:4 --seeds 0 --searches level-switch:attn_mlp:kl

Data as in benchmarks/msp_search.py: SmolLM2-135M, 32 x 1024 C4 calibration rows, 4 x 512 C4 fitness
windows, 40 x 1024 held-out Wikipedia evaluation windows, all drawn with --data-seed (0) whatever the
search's seed, so seeds change only the search. A search is SEARCH:GRANULARITY:FITNESS. ``paper`` runs
--population x --generations (20 x 20, the paper's); ``level-switch`` runs --offspring children a
generation, screened on one fitness window, the best 2 scored on all four, for as many generations
as keep its cost within --budget full evaluations (159: what the paper's 20 x 20 spent on Wanda 3:4,
results/msp_search.json). Costs count full evaluations of 4 x 512 tokens, a screening priced by its
tokens.

Each final plan is pruned sequentially and evaluated on the held-out windows (95% bootstrap interval
over windows). The dense-input vs sequential gap: the search's successive best individuals (up to
--finalists distinct ones) are pruned sequentially and scored by perplexity on the fitness windows;
the row records whether the sequential scores pick the same plan as the search's own (dense-input)
fitness, and their Spearman agreement. The searches of one config share one level cache (built from the
same calibration rows whatever the seed); its build time is counted in each row's minutes. With
--skip-done, rows already in the results file are not run again. Writes results/search_compare.json (rows are added; a rerun of
a row replaces it) and results/search_compare_<config>.png (best fitness against fitness tokens).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from results_file import add_row, read  # noqa: E402

from msp_callback.allocation import make_plan  # noqa: E402
from msp_callback.evaluate import perplexity, perplexity_report  # noqa: E402
from msp_callback.job import PruneSettings, prepare  # noqa: E402
from msp_callback.plan import SparsityPlan, parse_nm  # noqa: E402
from msp_callback.pruner import prune  # noqa: E402
from msp_callback.search.level_cache import LevelCache  # noqa: E402
from msp_callback.search.runner import SearchSettings  # noqa: E402

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("search_compare")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["wanda:3:4", "sparsegpt:3:4", "wanda:2:4"],
                   metavar="CRITERION:N:M")
    p.add_argument("--searches", nargs="+", default=["paper:block:ppl", "level-switch:attn_mlp:kl"],
                   metavar="SEARCH:GRANULARITY:FITNESS")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--population", type=int, default=20, help="paper: individuals per generation")
    p.add_argument("--generations", type=int, default=20, help="paper: generations")
    p.add_argument("--offspring", type=int, default=16, help="level-switch: children per generation")
    p.add_argument("--budget", type=float, default=159.0, help="level-switch: most full-evaluation units")
    p.add_argument("--finalists", type=int, default=4, help="distinct best individuals re-scored sequentially")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--skip-done", action="store_true", help="do not rerun rows already in --out")
    p.add_argument("--out", type=Path, default=RESULTS / "search_compare.json")
    return p.parse_args(argv)


def data_settings(args: argparse.Namespace) -> PruneSettings:
    """The model and data of every row: calibration, fitness and held-out windows drawn with --data-seed."""
    return PruneSettings(model=args.model, calib_samples=args.calib_samples, calib_seqlen=1024,
                         eval_windows=args.eval_windows, eval_seqlen=1024,
                         seed=args.data_seed, fitness_samples=4, fitness_seqlen=512, progress=False)


def search_settings(spec: str, args: argparse.Namespace, full_tokens: int, screen_tokens: int) -> SearchSettings:
    search, granularity, fitness = spec.split(":")
    if search == "paper":
        return SearchSettings(search="paper", granularity=granularity, fitness=fitness, population=args.population,
                              generations=args.generations)
    per_generation = args.offspring * screen_tokens / full_tokens + 2
    generations = int(args.budget // per_generation) - 1  # generation 0 selects among 16 starts the same way
    return SearchSettings(search="level-switch", granularity=granularity, fitness=fitness, population=args.offspring,
                          generations=generations, survivors=2, screen_windows=1)


def command(args: argparse.Namespace) -> str:
    """The command line, without an --out that names the default file (however it was spelled)."""
    argv = sys.argv[1:]
    if "--out" in argv and args.out.resolve() == (RESULTS / "search_compare.json").resolve():
        at = argv.index("--out")
        argv = argv[:at] + argv[at + 2:]
    return " ".join(["python", "benchmarks/search_compare.py", *argv])


def spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ranks = [sorted(range(len(v)), key=lambda i: v[i]) for v in (a, b)]
    pos = [[0] * len(a) for _ in ranks]
    for r, order in enumerate(ranks):
        for place, i in enumerate(order):
            pos[r][i] = place
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(*pos)) / (n * (n * n - 1))


def sequential_gap(inputs, plan: SparsityPlan, restore, finalists: int) -> dict:
    """Sequential-prune fitness-split perplexity of the search's successive best individuals."""
    history = plan.metadata["history"]
    seen: dict[tuple[int, ...], float] = {}
    for h in reversed(history):  # the last (best) ones first
        key = tuple(h["best_levels"])
        if key not in seen:
            seen[key] = h["best_fitness"]
        if len(seen) == finalists:
            break
    candidates = list(seen)
    sequential = []
    for levels in candidates:
        candidate = dataclasses.replace(plan, levels=list(levels))  # the plan's other fields, e.g. "msp"
        prune(inputs.model, candidate, inputs.calibration, progress=False)
        sequential.append(perplexity(inputs.model, inputs.fitness_windows, 4, progress=False))
        restore()
    cached = [seen[c] for c in candidates]
    best_cached = min(range(len(candidates)), key=lambda i: cached[i])
    best_sequential = min(range(len(candidates)), key=lambda i: sequential[i])
    return {"candidates": [list(c) for c in candidates], "search_fitness": cached, "sequential_fitness_ppl": sequential,
            "same_winner": best_cached == best_sequential, "sequential_winner": list(candidates[best_sequential]),
            "spearman": spearman(cached, sequential)}


def plot(record: dict, out: Path) -> None:
    import itertools

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for config in sorted({r["config"] for r in record["rows"]}):
        rows = [r for r in record["rows"] if r["config"] == config]
        fitnesses = sorted({r["fitness"] for r in rows})
        fig, axes = plt.subplots(1, len(fitnesses), figsize=(5.5 * len(fitnesses), 3.8), squeeze=False)
        for ax, fitness in zip(axes[0], fitnesses):
            for k, r in enumerate(sorted((r for r in rows if r["fitness"] == fitness), key=lambda r: r["row"])):
                tokens = [c * r["fitness_tokens"] for c in itertools.accumulate(h.get("cost", h["evaluations"])
                                                                              for h in r["history"])]
                ax.plot(tokens, [h["best_fitness"] for h in r["history"]], color=f"C{k}",
                        label=f"{r['search']} {r['granularity']} seed {r['seed']}")
            ax.set_yscale("log")
            ax.set_xlabel("fitness tokens")
            ax.set_ylabel(f"best fitness ({fitness})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{record.get('model', '')} {config}: search convergence")
        fig.tight_layout()
        fig.savefig(out.with_name(f"{out.stem}_{config.replace(':', '_')}.png"), dpi=110)
        plt.close(fig)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = data_settings(args)
    inputs = prepare(settings)
    restore = inputs.dense_snapshot()
    full_tokens = int(inputs.fitness_windows.numel())
    screen_tokens = int(inputs.fitness_windows[:1].numel())
    dense = perplexity_report(inputs.model, inputs.windows, progress=False)
    for config in args.configs:
        criterion, n_text, m_text = config.split(":")
        n, m = parse_nm(f"{n_text}:{m_text}")
        done = {x["row"] for x in read(args.out)["rows"]} if args.skip_done else set()
        # searches side by side per seed: a cut-short run leaves matched pairs
        todo = [(seed, spec) for seed in args.seeds for spec in args.searches if f"{config}|{spec}|{seed}" not in done]
        if not todo:
            continue
        started = time.perf_counter()
        cache = LevelCache(inputs.model, criterion, m, inputs.calibration, progress=False)
        cache_seconds = time.perf_counter() - started
        for seed, spec in todo:
            search = search_settings(spec, args, full_tokens, screen_tokens)
            started = time.perf_counter()
            plan = make_plan("msp", inputs.model, n, m, criterion, calibration=inputs.calibration,
                             fitness_windows=inputs.fitness_windows, search=search, seed=seed, progress=False,
                             level_cache=cache)
            plan_seconds = time.perf_counter() - started
            prune(inputs.model, plan, inputs.calibration, progress=False)
            report = perplexity_report(inputs.model, inputs.windows, progress=False)
            restore()
            meta = plan.metadata
            row = {"row": f"{config}|{spec}|{seed}", "config": config, "search": search.search,
                   "granularity": search.granularity, "fitness": search.fitness, "seed": seed,
                   "population": search.population, "generations": search.generations,
                   "levels": plan.levels, "unit_names": plan.unit_names, "ppl": report.perplexity,
                   "interval": list(report.interval()), "best_fitness": meta["best_fitness"],
                   "fitness_evaluations": meta["fitness_evaluations"], "fitness_cost": meta["fitness_cost"],
                   "fitness_tokens": full_tokens, "fitness_tokens_spent": meta["fitness_cost"] * full_tokens,
                   "level_cache_seconds": cache_seconds, "level_cache_shared": True, "search_seconds": meta["search_seconds"],
                   "plan_seconds": plan_seconds, "history": meta["history"],
                   "sequential_gap": sequential_gap(inputs, plan, restore, args.finalists)}
            log.info("%s: ppl %.1f (%s), cost %.1f, %.0f s", row["row"], row["ppl"],
                     plan.describe(), row["fitness_cost"], plan_seconds)
            record = read(args.out)
            record.update(command=command(args),
                          model=args.model, calib=f"c4, {args.calib_samples} x 1024", fitness="c4, 4 x 512",
                          eval_corpus=settings.eval_corpus, eval_tokens=int(inputs.windows.numel()),
                          dense_ppl=dense.perplexity, dense_interval=list(dense.interval()),
                          machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
                                  f"{torch.__version__}")
            add_row(args.out, record, row)
            plot(record, args.out)
        cache.close()
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
