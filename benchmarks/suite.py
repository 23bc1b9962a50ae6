"""The whole benchmark suite in one command, resumable: every finished cell is a JSON file in
benchmarks/results/ and is skipped on the next run (``--force`` re-runs). BENCHMARKS.md is
regenerated from the JSON at the end.

    python benchmarks/suite.py --quick        # the main 75% row (Wanda 3:4): uniform / OWL / MSP with
                                              # a smaller calibration and evaluation and a 20 x 14 search
    python benchmarks/suite.py --quick --criteria magnitude sparsegpt   # the other 3:4 rows, same budget
    python benchmarks/suite.py                # the paper's grid: 3 criteria x 10 N:M targets x
                                              # uniform / OWL / MSP, plus export speed, stage cost and
                                              # the thread-count check
    python benchmarks/suite.py --criteria wanda --sparsities 3:4 6:8 --dry-run   # what would run
    python benchmarks/suite.py --quick --criteria wanda --seeds 1 2   # the main row's seed-to-seed noise

Each grid cell is one `benchmarks/msp_search.py` run (same data, seed and evaluation for every
allocation inside it); see that script for the settings. On this 2-core CPU a full-setting cell
takes 40-90 min, so the full grid is days of CPU: run the cells you need.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CRITERIA = ["magnitude", "wanda", "sparsegpt"]
SPARSITIES = ["2:4", "4:8", "8:16", "5:8", "10:16", "3:4", "6:8", "12:16", "7:8", "14:16"]


MAIN_CELL = ("wanda", "3:4")  # the main result, msp_search.json, also measures the fitness cost


def cell_name(criterion: str, sparsity: str, quick: bool, seed: int = 0) -> str:
    suffix = f"_seed{seed}" if seed else ""
    if (criterion, sparsity) == MAIN_CELL and not quick:
        return "msp_search" + suffix
    n, m = sparsity.split(":")
    return f"msp_search_{criterion}_{n}of{m}" + ("_quick" if quick else "") + suffix


def plan_steps(args: argparse.Namespace, done=lambda name: False) -> list[tuple[list[str], list[str]]]:
    """(result names, command) for every step still to run, in order. Quick mode runs the criteria
    of one target and seed in one process (one model load and dense evaluation for all); the full
    grid runs one cell per process."""
    steps = []
    for sparsity in args.sparsities:
        for seed in args.seeds:
            cells = [(c, cell_name(c, sparsity, args.quick, seed)) for c in args.criteria]
            cells = [(c, name) for c, name in cells if not done(name)]
            groups = [cells] if args.quick else [[cell] for cell in cells]
            for group in filter(None, groups):
                names = [name for _, name in group]
                cost = ["--naive-individuals", "1"] if names == ["msp_search"] else ["--no-cost"]
                command = ["benchmarks/msp_search.py", "--criterion", *[c for c, _ in group], "--sparsity", sparsity,
                           "--seed", str(seed), "--allocations", *args.allocations, *cost, "--name", *names]
                steps.append((names, command + (["--quick"] if args.quick else [])))
    if not args.quick and not args.grid_only:
        steps += [([name], [f"benchmarks/{name}.py"]) for name in ("export_speed", "stage_cost", "thread_check")
                  if not done(name)]
    return steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="the main row (Wanda 3:4 unless --criteria/--sparsities say otherwise) at the quick budget "
                        "(msp_search.py --quick)")
    p.add_argument("--criteria", nargs="+", default=None,
                   help=f"criteria (default: all of {', '.join(CRITERIA)}; --quick: {MAIN_CELL[0]}, the main row)")
    p.add_argument("--sparsities", nargs="+", default=None, help="N:M targets (default: all ten; --quick: 3:4)")
    p.add_argument("--allocations", nargs="+", default=["uniform", "owl", "msp"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="seeds per cell (calibration sample, fitness windows, search); seed k > 0 adds _seedk to the name")
    p.add_argument("--grid-only", action="store_true", help="skip export speed, stage cost and the thread check")
    p.add_argument("--force", action="store_true", help="re-run cells whose result exists")
    p.add_argument("--dry-run", action="store_true", help="list the steps and whether each is done")
    args = p.parse_args()
    args.sparsities = args.sparsities or ([MAIN_CELL[1]] if args.quick else SPARSITIES)
    args.criteria = args.criteria or ([MAIN_CELL[0]] if args.quick else CRITERIA)

    def done(name: str) -> bool:
        return (RESULTS / f"{name}.json").exists() and not args.force

    if args.dry_run:
        for name in (n for sp in args.sparsities for c in args.criteria for seed in args.seeds
                     for n in [cell_name(c, sp, args.quick, seed)] if done(n)):
            print(f"done  {name}")
    for names, command in plan_steps(args, done):
        if args.dry_run:
            print(f"todo  {', '.join(names)}: python {' '.join(command)}")
            continue
        print(f"run  {', '.join(names)}: python {' '.join(command)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, *command], cwd=HERE.parent)
        if code:
            print(f"FAILED {', '.join(names)} (exit {code}); finished cells are kept, rerun to continue", flush=True)
            return code
        print(f"done {', '.join(names)} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    if not args.dry_run:
        return subprocess.call([sys.executable, "benchmarks/report.py"], cwd=HERE.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
