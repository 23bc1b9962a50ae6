"""The default ``msp prune`` as a user runs it, timed end to end, per search and seed.

    python benchmarks/default_prune.py                                  # all three rows; seeds 0 1
    python benchmarks/default_prune.py --searches reconstruct --seeds 0

Each row is one fresh ``msp prune --seed SEED --json ...`` (every other setting at its default:
SmolLM2-135M, Wanda 3:4, 16 x 512 C4 calibration tokens, 4 x 512 fitness tokens, 40 x 1024 held-out
Wikipedia evaluation tokens). ``reconstruct`` is the default job itself: block-wise reconstruction
(4 epochs), which keeps every block trainable (levels at most 3 of 4), so at 3:4 the plan is uniform
and no search runs. ``level-switch`` and ``paper`` are the plain prune with a search
(``--reconstruct-epochs 0 --search SEARCH``): the level-switch search (perplexity fitness, screened on
1 of the 4 fitness windows; the default search) or the paper's algorithm (perplexity fitness, no
screening). The seed draws the calibration and fitness windows as well as the search's choices, as it
does for a user. Wall time is the whole command: load, dense and pruned evaluation, level cache,
search, prune (and reconstruction), samples and the save. Writes results/default_prune.json (rows are
added; a rerun of a row replaces it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from results_file import add_row, read  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def one(search: str, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        how = [] if search == "reconstruct" else ["--reconstruct-epochs", "0", "--search", search]
        command = [sys.executable, "-m", "msp_callback.cli", "prune", *how, "--seed", str(seed),
                   "--json", str(out), "--output", str(Path(tmp) / "run"), "--quiet"]
        started = time.perf_counter()
        subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        seconds = time.perf_counter() - started
        result = json.loads(out.read_text())
    keep = ("dense_ppl", "pruned_ppl", "measured_sparsity", "levels", "seconds", "search_seconds",
            "fitness_evaluations", "best_fitness", "saved_model", "sample_seconds", "samples",
            "allocation", "reconstruction")
    return {"row": f"{search}|{seed}", "search": search, "seed": seed, "wall_seconds": seconds,
            **{k: result.get(k) for k in keep}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--searches", nargs="+", default=["reconstruct", "level-switch", "paper"],
                   choices=("reconstruct", "level-switch", "paper"),
                   help="reconstruct = the default job; level-switch, paper = the plain prune with that search")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", type=Path, default=RESULTS / "default_prune.json")
    args = p.parse_args()
    import torch

    saved = read(args.out)
    for seed in args.seeds:  # searches interleaved per seed: side by side on the same machine state
        for search in args.searches:
            row = one(search, seed)
            print(json.dumps(row))
            saved.update(command="python benchmarks/default_prune.py " + " ".join(sys.argv[1:]),
                         machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
            add_row(args.out, saved, row)


if __name__ == "__main__":
    main()
