"""Resident memory of the level cache by where it lives (``cache_storage``), one process each.

    python benchmarks/cache_storage.py                       # smollm2-135m, wanda and sparsegpt, M=4

For each criterion and storage (device = beside the model, here CPU memory; disk = memory-mapped
files), a fresh process loads the model, builds the level cache on 8 x 512 calibration tokens and
applies one mixed plan, then reports its anonymous resident memory (RssAnon after ``malloc_trim``: what the cache
keeps in RAM; file pages of the disk store are not anonymous) and the cache's own size estimate, in bytes
per block parameter. Writes results/cache_storage.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def rss_anon_bytes() -> int:
    """Anonymous resident memory, after handing freed heap back to the system (glibc keeps the
    peak of transient allocations otherwise, which would be counted as the cache's)."""
    from memory_probe import read_status, trim_heap

    trim_heap()
    return read_status()["RssAnon"]


def one(criterion: str, storage: str, m: int) -> dict:
    import torch

    from msp_callback.job import PruneSettings, prepare
    from msp_callback.models import named_block_linears
    from msp_callback.search.level_cache import LevelCache

    inputs = prepare(PruneSettings(calib_samples=8, calib_seqlen=512, eval_windows=1, progress=False))
    model = inputs.model
    block_params = sum(mod.weight.numel() for mod in named_block_linears(model).values())
    before = rss_anon_bytes()
    cache = LevelCache(model, criterion, m, inputs.calibration, progress=False, storage=storage)
    levels = [(i % (m + 1)) for i in range(len(cache.blocks))]
    cache.apply(levels)
    after = rss_anon_bytes()
    estimate = LevelCache.estimated_bytes(cache.linears, cache.criterion, m)
    cache.close()
    return {"criterion": criterion, "storage": storage, "m": m, "block_parameters": block_params,
            "rss_anon_added_bytes_per_param": round((after - before) / block_params, 2),
            "estimate_bytes_per_param": round(estimate / block_params, 2), "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--criteria", nargs="+", default=["wanda", "sparsegpt"])
    p.add_argument("--storages", nargs="+", default=["device", "disk"])
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--one", nargs=2, metavar=("CRITERION", "STORAGE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.m)))
        return
    rows = []
    for criterion in args.criteria:
        for storage in args.storages:
            out = subprocess.run([sys.executable, __file__, "--one", criterion, storage, "--m", str(args.m)],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cache_storage.json").write_text(json.dumps(
        {"command": "python benchmarks/cache_storage.py " + " ".join(sys.argv[1:]), "model": "smollm2-135m",
         "calibration": "8 x 512 tokens of c4", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
