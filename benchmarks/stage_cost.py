"""Wall time and peak memory of each stage of an MSP run, medians of repeated runs.

    python benchmarks/stage_cost.py               # smollm2-135m, Wanda 3:4, 3 repeats
    python benchmarks/stage_cost.py --repeats 1   # one pass

Stages, in pipeline order: load (packaged model from the cache), data (read, tokenise and sample
calibration / fitness / evaluation text), fisher (per-sample Fisher traces), level cache (every
level's weights or ranks, for the search), search (a fixed small evolutionary search), prune (the
final sequential Wanda prune), evaluate (perplexity). Peak memory is the process's resident-set
high-water mark during the stage (Linux ``VmHWM``, reset before each stage), so it includes the
model and everything alive from earlier stages. Writes results/stage_cost.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from msp_callback.atomic_files import atomic_write_text
from msp_callback.evaluate import perplexity
from msp_callback.job import PruneSettings, prepare
from msp_callback.loading import load_causal_lm
from msp_callback.plan import nm_string, parse_nm
from msp_callback.pruner import prune
from msp_callback.search.level_cache import LevelCache
from msp_callback.search.runner import SearchSettings, search_plan
from msp_callback.sensitivity import fisher_traces

RESULTS = Path(__file__).parent / "results"


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux: the peak then covers the whole process so far
        pass


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured(record: dict, stage: str, fn):
    reset_peak()
    start = time.perf_counter()
    out = fn()
    record.setdefault(stage, {"seconds": [], "peak_mib": []})
    record[stage]["seconds"].append(time.perf_counter() - start)
    record[stage]["peak_mib"].append(peak_mib())
    return out


def one_run(args: argparse.Namespace, record: dict) -> None:
    n, m = parse_nm(args.sparsity)
    settings = PruneSettings(calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, eval_windows=args.eval_windows,
                             fitness_samples=args.fitness_samples, fitness_seqlen=args.fitness_seqlen, progress=False)
    loaded = measured(record, "load", lambda: load_causal_lm(settings.model))
    inputs = measured(record, "data", lambda: prepare(settings, loaded))
    model, calibration = inputs.model, inputs.calibration
    trace_rows = [torch.cat(list(calibration))[: args.trace_samples]]
    measured(record, "fisher", lambda: fisher_traces(model, trace_rows, progress=False))
    measured(record, "level cache", lambda: LevelCache(model, args.criterion, m, calibration))
    search = SearchSettings(population=args.population, generations=args.generations)
    plan = measured(record, "search", lambda: search_plan(model, n, m, args.criterion, calibration, inputs.fitness_windows,
                                                          search, progress=False))
    record.setdefault("search evaluations", []).append(plan.metadata.get("fitness_evaluations"))
    measured(record, "prune", lambda: prune(model, plan, calibration, progress=False))
    measured(record, "evaluate", lambda: perplexity(model, inputs.windows, progress=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--criterion", default="wanda")
    p.add_argument("--sparsity", default="3:4")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--trace-samples", type=int, default=4)
    p.add_argument("--fitness-samples", type=int, default=4)
    p.add_argument("--fitness-seqlen", type=int, default=512)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    record: dict = {}
    for _ in range(args.repeats):
        one_run(args, record)
    stages = {name: {"median_s": statistics.median(v["seconds"]), "median_peak_mib": statistics.median(v["peak_mib"]), **v}
              for name, v in record.items() if isinstance(v, dict)}
    result = {
        "command": " ".join(["python", "benchmarks/stage_cost.py", *sys.argv[1:]]), "arguments": vars(args),
        "model": "smollm2-135m", "sparsity": nm_string(*parse_nm(args.sparsity)), "stages": stages,
        "search_evaluations": record.get("search evaluations"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    atomic_write_text(RESULTS / "stage_cost.json", json.dumps(result, indent=2))
    for name, s in stages.items():
        print(f"{name:>12}: {s['median_s']:7.1f} s  peak {s['median_peak_mib']:7.0f} MiB")


if __name__ == "__main__":
    main()
