"""Distillation settings on top of block-wise reconstruction, side by side from one reconstructed model.

    python benchmarks/kd_variants.py --minutes 5 --plan uniform --variants 4:1e-4 1:1e-4 1:3e-4 4:3e-4

SmolLM2-135M, Wanda 3:4 (uniform, or the MSP levels of results/reconstruct.json), pruned with the
default block-wise reconstruction on 32 x 512 C4 calibration windows; the reconstructed weights are
kept, and each variant BATCH:LR starts from them: KD recovery (`msp_callback.recover`, sparse method,
top-64 KL to the dense model) with BATCH windows of 512 tokens a step (the same 128 C4 windows, the
dense model's targets computed once before pruning), AdamW at LR, for at most ``--minutes`` of
training, then held-out perplexity on 40 x 1024 Wikipedia tokens with a 95% bootstrap interval.
Writes results/kd_variants.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0, help="KD training minutes per variant")
    p.add_argument("--plan", choices=("uniform", "msp"), default="uniform")
    p.add_argument("--variants", nargs="+", default=["4:1e-4", "1:1e-4", "1:3e-4", "4:3e-4"], metavar="BATCH:LR")
    p.add_argument("--out", type=Path, default=RESULTS / "kd_variants.json")
    args = p.parse_args()

    import torch

    from msp_callback.config import RecoverSettings, extract
    from msp_callback.evaluate import perplexity_report
    from msp_callback.job import PruneSettings, _prune, prepare, recovery_inputs
    from msp_callback.plan import SparsityPlan
    from msp_callback.recover import TeacherTargets, recover

    settings = PruneSettings(sparsity="3:4", calib_samples=32, progress=False, recover_steps=100000, recover_lr=1e-4,
                             recover_windows=128, recover_batch_size=4, recover_seqlen=512,
                             recover_max_minutes=args.minutes)
    inputs = prepare(settings)
    model = inputs.model
    windows, teacher = recovery_inputs(settings, inputs)  # on the dense model
    levels = {r["row"]: r["levels"] for r in json.loads((RESULTS / "reconstruct.json").read_text())["rows"]}
    plan = SparsityPlan(m=4, target=3, levels=levels[f"wanda:3:4:{args.plan}"], criterion="wanda", allocation=args.plan)
    started = time.perf_counter()
    _prune(settings, inputs, plan)

    def report() -> dict:
        r = perplexity_report(model, inputs.windows, progress=False)
        return {"ppl": r.perplexity, "interval": list(r.interval())}

    record = {"command": "python benchmarks/" + " ".join([Path(__file__).name, *sys.argv[1:]]), "plan": args.plan,
              "levels": plan.levels, "reconstructed": report(),
              "reconstruct_minutes": round((time.perf_counter() - started) / 60, 2), "kd_minutes": args.minutes,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "variants": {}}
    print(f"reconstructed {args.plan}: {record['reconstructed']['ppl']:.1f}", flush=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for variant in args.variants:
        batch, lr = int(variant.split(":")[0]), float(variant.split(":")[1])
        model.load_state_dict(state)
        steps, targets = windows, teacher
        if batch != settings.recover_batch_size:  # the same windows and targets, cut into steps of ``batch``
            steps = [w for b in windows for w in b.split(batch)]
            targets = TeacherTargets([t for b in teacher.logprobs for t in b.split(batch)],
                                     [t for b in teacher.tokens for t in b.split(batch)])
        losses = recover(model, steps, replace(extract(settings, RecoverSettings), recover_lr=lr, recover_batch_size=batch),
                         targets, progress=False, seed=0)
        record["variants"][variant] = {**report(), "steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}
        print(variant, f"{record['variants'][variant]['ppl']:.1f} in {len(losses)} steps", flush=True)
        args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
