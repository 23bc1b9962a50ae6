"""SparseGPT with one Gram matrix and one factorisation per input, against one per linear.

    python benchmarks/sparsegpt_sharing.py        # smollm2-135m, 8 x 512 C4 tokens, 1 thread, 2 repeats

q/k/v and gate/up read the very same tensor, so `block_walk.collect_input_stats` gives them one
`InputStats` (one X^T X) and SparseGPT one inverse-Hessian factor (4 Gram matrices and 4
factorisations a Llama block instead of 7). This times both ways side by side, in one process on
the same data, alternating the order: the sequential prune (uniform SparseGPT 2:4) and the
search's level cache (levels 1..3 of every linear), and checks that the pruned weights (and the
cached weights) are bit for bit the same. "separate" is the code before the change (every linear
its own statistics), run by turning the sharing off. Writes benchmarks/results/sparsegpt_sharing.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))

from msp_callback import block_walk  # noqa: E402
from msp_callback.atomic_files import atomic_write_text  # noqa: E402
from msp_callback.job import PruneSettings, prepare  # noqa: E402
from msp_callback.models import find_blocks, named_block_linears  # noqa: E402
from msp_callback.plan import SparsityPlan  # noqa: E402
from msp_callback.pruner import prune  # noqa: E402
from msp_callback.search.level_cache import LevelCache  # noqa: E402

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("sparsegpt_sharing")
SHARING = block_walk._run_collecting


def sharing(on: bool) -> None:
    """Statistics shared per input (the library's way), or one per linear (before the change)."""
    block_walk._run_collecting = SHARING if on else (lambda *a, share, **k: SHARING(*a, share=False, **k))


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--calib-samples", type=int, default=8)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    settings = PruneSettings(model=args.model, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
                             eval_windows=1, progress=False)
    inputs = prepare(settings)
    model, calibration = inputs.model, inputs.calibration
    restore = inputs.dense_snapshot()
    plan = SparsityPlan.uniform(2, 4, len(find_blocks(model)), criterion="sparsegpt")
    runs = []
    for repeat in range(args.repeats):
        for mode in (("shared", "separate") if repeat % 2 == 0 else ("separate", "shared")):
            sharing(mode == "shared")
            start = time.perf_counter()
            cache = LevelCache(model, "sparsegpt", 4, calibration, progress=False)
            cache_seconds = time.perf_counter() - start
            cached = digest(w for block in cache.pruned for levels in block.values() for w in levels.values())
            cache.close()
            start = time.perf_counter()
            prune(model, plan, calibration, progress=False)
            prune_seconds = time.perf_counter() - start
            pruned = digest(m.weight for m in named_block_linears(model).values())
            restore()
            runs.append({"mode": mode, "repeat": repeat, "level_cache_seconds": round(cache_seconds, 2),
                         "prune_seconds": round(prune_seconds, 2), "level_cache_sha256": cached, "pruned_sha256": pruned})
            log.info("%s: level cache %.1f s, prune %.1f s", mode, cache_seconds, prune_seconds)
    sharing(True)
    summary = {}
    for mode in ("separate", "shared"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {key: round(statistics.median(r[key] for r in mine), 2)
                         for key in ("level_cache_seconds", "prune_seconds")}
    identical = {key: len({r[key] for r in runs}) == 1 for key in ("level_cache_sha256", "pruned_sha256")}
    result = {"command": " ".join(["python", "benchmarks/sparsegpt_sharing.py", *sys.argv[1:]]),
              "arguments": vars(args), "model": args.model, "plan": "uniform SparseGPT 2:4 (prune); levels 1..3 (level cache)",
              "calib": f"{args.calib_samples} x {args.calib_seqlen} tokens of {settings.calib_corpus}",
              "machine": f"{platform.machine()}, {args.threads} thread(s), torch {torch.__version__}",
              "median_seconds": summary, "identical_weights": identical, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "sparsegpt_sharing.json", json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median_seconds", "identical_weights")}, indent=2))


if __name__ == "__main__":
    main()
