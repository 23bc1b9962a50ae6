"""One reconstruction setting on SmolLM2-135M, uniform levels: the held-out perplexity it gives.

    python benchmarks/reconstruct_sweep.py reconstruct_epochs=3 reconstruct_step=absolute reconstruct_lr=3e-3
    python benchmarks/reconstruct_sweep.py reconstruct_epochs=3 reconstruct_lr=0.025 reconstruct_target=pruned
    python benchmarks/reconstruct_sweep.py reconstruct_epochs=0            # plain pruning

Any ``reconstruct_*`` setting as KEY=VALUE; also sparsity=3:4, calib=16 (windows of 512 C4 tokens),
holdout=4 (windows, seed 3), eval_windows=10 (1024 held-out Wikipedia tokens each). Wanda, every
block at the target level. Prints each block's report, the minutes and the perplexity; the results
of the runs that chose the defaults are in results/reconstruct_sweep.json (one run each).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from msp_callback import data  # noqa: E402
from msp_callback.config import ReconstructSettings  # noqa: E402
from msp_callback.evaluate import perplexity  # noqa: E402
from msp_callback.job import PruneSettings, prepare  # noqa: E402
from msp_callback.plan import SparsityPlan, parse_nm  # noqa: E402
from msp_callback.pruner import prune  # noqa: E402
from msp_callback.reconstruct import reconstruct  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    sparsity = args.pop("sparsity", "2:4")
    n, m = parse_nm(sparsity)
    calib, holdout_n, eval_windows = (int(args.pop(k, d)) for k, d in (("calib", 16), ("holdout", 4), ("eval_windows", 10)))
    inputs = prepare(PruneSettings(sparsity=sparsity, calib_samples=calib, eval_windows=eval_windows, progress=False))
    holdout = data.sample_calibration(inputs.calib_tokens, holdout_n, 512, 3, inputs.bos_id) if holdout_n else []
    kinds = {f.name: type(f.default) for f in fields(ReconstructSettings)}
    settings = ReconstructSettings(**{k: v if kinds[k] is type(None) else kinds[k](v) for k, v in args.items()})
    print(settings)
    plan = SparsityPlan(m=m, target=n, levels=[n] * len(inputs.model.model.layers), criterion="wanda")
    start = time.time()
    if settings.reconstruct_epochs:
        reconstruct(inputs.model, plan, inputs.calibration, settings, holdout=holdout, progress=False)
    else:
        prune(inputs.model, plan, inputs.calibration, progress=False)
    print("minutes", (time.time() - start) / 60)
    print("ppl", perplexity(inputs.model, inputs.windows, progress=False))


if __name__ == "__main__":
    main()
