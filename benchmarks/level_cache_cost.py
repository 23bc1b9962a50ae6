"""What building the level cache costs when each block runs once per batch, against twice (before).

    python benchmarks/level_cache_cost.py                  # smollm2-135m, wanda, M=4, 16 x 512, 3 repeats
    python benchmarks/level_cache_cost.py --criteria sparsegpt --repeats 1   # slow: its per-level prunes dominate
    python benchmarks/level_cache_cost.py --calib-samples 32 --calib-seqlen 1024

The cache needs each block's input statistics on dense-model inputs, and the next block's inputs
are the same block's outputs: one run gives both. The earlier build ran each block a second time
for the next block's inputs; it is emulated here by discarding the outputs the visit returns.
Builds alternate (once, twice, once, ...) in one process; medians of --repeats. Checks that both
builds cache the same weights. Writes results/level_cache_cost.json.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from results_file import add_row, read  # noqa: E402

from msp_callback.job import PruneSettings, prepare  # noqa: E402
from msp_callback.search.level_cache import LevelCache  # noqa: E402

RESULTS = Path(__file__).parent / "results"


class RunTwice(LevelCache):
    """The earlier build: the walk runs each block again for the next block's inputs."""

    def _fill(self, index, inputs):
        super()._fill(index, inputs)
        return None


def same_weights(a: LevelCache, b: LevelCache) -> bool:
    return all(torch.equal(a.weight(i, name, level), b.weight(i, name, level))
               for i, lin in enumerate(a.linears) for name in lin for level in range(1, a.m))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--criteria", nargs="+", default=["wanda"])
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "level_cache_cost.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    inputs = prepare(PruneSettings(model=args.model, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
                                   eval_windows=1, progress=False))
    record = read(args.out)
    record.update(command=" ".join(["python", "benchmarks/level_cache_cost.py", *sys.argv[1:]]), model=args.model,
                  machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for criterion in args.criteria:
        seconds: dict[str, list[float]] = {"once": [], "twice": []}
        for _ in range(args.repeats):
            built = {}
            for name, kind in (("once", LevelCache), ("twice", RunTwice)):
                started = time.perf_counter()
                built[name] = kind(inputs.model, criterion, args.m, inputs.calibration, progress=False)
                seconds[name].append(time.perf_counter() - started)
            same = same_weights(built["once"], built["twice"])
            for cache in built.values():
                cache.close()
        once, twice = statistics.median(seconds["once"]), statistics.median(seconds["twice"])
        row = {"row": f"{criterion}|{args.m}|{args.calib_samples}x{args.calib_seqlen}", "criterion": criterion,
               "m": args.m, "calibration": f"{args.calib_samples} x {args.calib_seqlen}", "seconds": seconds,
               "median_once": once, "median_twice": twice, "speedup": twice / once, "same_weights": same}
        print(f"{criterion} M={args.m}: once {once:.1f} s, twice {twice:.1f} s: {twice / once:.2f}x; same weights: {same}")
        add_row(args.out, record, row)


if __name__ == "__main__":
    main()
