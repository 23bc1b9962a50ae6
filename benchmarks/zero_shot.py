"""Zero-shot accuracy (lm-eval, the two local tasks) of dense, uniform-pruned and MSP-pruned SmolLM2-135M.

    python benchmarks/zero_shot.py                      # Wanda 3:4, 200 examples per task
    python benchmarks/zero_shot.py --sparsity 2:4 --limit 500

Prunes with Wanda (calibration 16 x 512 c4 tokens) at uniform levels and at the MSP levels a
search benchmark stored (results/msp_search.json for 3:4, msp_search_2of4.json for 2:4), and runs
`msp_callback.zero_shot` on each model in turn (the dense one first). Accuracies come with lm-eval's
standard errors. Writes results/zero_shot.json (one entry per sparsity).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

RESULTS = Path(__file__).parent / "results"
PLANS = {"3:4": "msp_search.json", "2:4": "msp_search_2of4.json"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", default="3:4", choices=sorted(PLANS))
    p.add_argument("--limit", type=int, default=200, help="examples per task")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()

    import torch

    from msp_callback.job import PruneSettings, prepare
    from msp_callback.nm import remove_masks
    from msp_callback.plan import SparsityPlan, parse_nm
    from msp_callback.pruner import prune
    from msp_callback.zero_shot import zero_shot

    n, m = parse_nm(args.sparsity)
    stored = json.loads((RESULTS / PLANS[args.sparsity]).read_text())
    msp_levels = next(r["levels"] for r in stored["rows"] if r["allocation"] == "msp")
    inputs = prepare(PruneSettings(calib_samples=16, calib_seqlen=512, eval_windows=1, progress=False))
    model, tokenizer = inputs.model, inputs.tokenizer
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for name, levels in (("dense", None), ("uniform", [n] * len(msp_levels)), ("msp", msp_levels)):
        if levels is not None:
            remove_masks(model, bake=False)
            model.load_state_dict(dense_state)
            prune(model, SparsityPlan(m=m, target=n, levels=levels, criterion="wanda", allocation=name),
                  inputs.calibration, progress=False)
        started = time.perf_counter()
        tasks = zero_shot(model, tokenizer, limit=args.limit, batch_size=args.batch_size)
        rows.append({"model": name, "levels": levels, "tasks": tasks, "seconds": round(time.perf_counter() - started, 1)})
        print(name, {t: f"{r['acc']:.3f} +- {r['stderr']:.3f}" for t, r in tasks.items()}, flush=True)
    path = RESULTS / "zero_shot.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record[args.sparsity] = {
        "command": f"python benchmarks/zero_shot.py --sparsity {args.sparsity} --limit {args.limit}",
        "model": "smollm2-135m", "criterion": "wanda", "calibration": "16 x 512 tokens of c4",
        "msp_levels_from": f"results/{PLANS[args.sparsity]}", "limit": args.limit, "rows": rows,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__}
    path.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
