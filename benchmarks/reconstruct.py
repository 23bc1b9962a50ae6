"""Block-wise reconstruction against plain pruning, and distillation on top, side by side.

    python benchmarks/reconstruct.py              # the five rows; 15 minutes of KD after the MSP Wanda ones
    python benchmarks/reconstruct.py --rows wanda:2:4:msp --kd-minutes 0 --set reconstruct_lr=0.01
    python benchmarks/reconstruct.py --model gemma3-270m --plan 3:4=runs/gemma/plan.json --kd-minutes 0
        --rows wanda:3:4:uniform wanda:3:4:msp --out benchmarks/results/reconstruct_gemma3.json  # one line

A row is CRITERION:N:M:ALLOCATION (ALLOCATION uniform, or msp: the levels a search benchmark stored
in results/, the same plans `benchmarks/recovery.py` distils, or a plan file given with ``--plan``). Each
row runs in a fresh process on SmolLM2-135M (``--model``: another): the dense model's top-k targets
on the recovery windows (for KD), a plain prune and its held-out perplexity, the dense weights
restored, then the same plan pruned with block-wise reconstruction (`msp_callback.reconstruct`) and its perplexity, then KD recovery of the
reconstructed model for at most ``--kd-minutes`` of training. Calibration and held-out
reconstruction windows come from C4 (disjoint seeds), evaluation from held-out Wikipedia,
40 x 1024 tokens, with 95% bootstrap intervals. The "KD alone" column is read from
results/recovery.json (the same plans, the same recovery settings). Writes results/reconstruct.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results"

from fresh_process import emit, run_fresh  # noqa: E402
from recovery import msp_levels  # noqa: E402
from results_file import add_row, read  # noqa: E402

DEFAULT_ROWS = ["wanda:3:4:msp", "wanda:2:4:msp", "wanda:3:4:uniform", "wanda:2:4:uniform", "sparsegpt:3:4:msp"]
KD_ROWS = ["wanda:3:4:msp", "wanda:2:4:msp"]


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def one(args: argparse.Namespace, row: str) -> dict:
    import torch

    from msp_callback.config import ReconstructSettings, RecoverSettings, extract
    from msp_callback.evaluate import perplexity_report
    from msp_callback.job import PruneSettings, _prune, prepare, recovery_inputs
    from msp_callback.plan import SparsityPlan, parse_nm
    from msp_callback.pruner import prune
    from msp_callback.recover import recover

    load = os.getloadavg()[0]  # other work on the machine as the row starts
    criterion, n, m, allocation = row.split(":")
    sparsity = f"{n}:{m}"
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    settings = PruneSettings(model=args.model, sparsity=sparsity, criterion=criterion, calib_samples=args.calib_samples,
                             calib_seqlen=args.calib_seqlen, eval_windows=args.eval_windows,
                             recover_steps=10000 if args.kd_minutes else 0, recover_lr=args.kd_lr,
                             recover_windows=args.kd_windows, recover_batch_size=4, recover_seqlen=512,
                             recover_max_minutes=args.kd_minutes, reconstruct_epochs=args.epochs, progress=False,
                             **overrides)
    n, m = parse_nm(sparsity)
    inputs = prepare(settings)
    model = inputs.model
    blocks = len(model.model.layers)
    if allocation == "uniform":
        levels, source = [n] * blocks, None
    elif sparsity in args.plans:  # a plan file the job wrote (msp prune ... writes <output>/plan.json)
        source = args.plans[sparsity]
        levels = SparsityPlan.load(source).levels
    else:
        levels, source = msp_levels(criterion, sparsity)
    plan = SparsityPlan(m=m, target=n, levels=levels, criterion=criterion, allocation=allocation)

    def report() -> dict:
        r = perplexity_report(model, inputs.windows, progress=False)
        return {"ppl": r.perplexity, "interval": list(r.interval())}

    dense = report() if args.dense else None
    recovery, teacher = recovery_inputs(settings, inputs)  # on the dense model
    restore = inputs.dense_snapshot()
    t0 = time.perf_counter()
    prune(model, plan, inputs.calibration, progress=False)
    prune_minutes = (time.perf_counter() - t0) / 60
    common = {"row": row, "criterion": criterion, "sparsity": sparsity, "allocation": allocation, "levels": levels,
              "plan_source": source, "dense": dense, "pruned": report(), "prune_minutes": round(prune_minutes, 2),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "load_at_start": round(load, 2)}
    if not args.epochs:  # the plain prune only (a row that needs no reconstruction column)
        return {**common, "reconstructed": None, "reconstructed_kd": None}
    restore()
    t0 = time.perf_counter()
    summary = _prune(settings, inputs, plan)
    reconstruct_minutes = (time.perf_counter() - t0) / 60
    reconstructed = report()
    print(row, f"pruned {common['pruned']['ppl']:.1f} -> reconstructed {reconstructed['ppl']:.1f} "
          f"({reconstruct_minutes:.1f} min)", file=sys.stderr, flush=True)
    kd = None
    if args.kd_minutes:
        with torch.random.fork_rng(devices=[]):
            losses = recover(model, recovery, extract(settings, RecoverSettings), teacher, progress=False, seed=0)
        kd = {**report(), "steps": len(losses), "minutes": args.kd_minutes, "first_loss": losses[0],
              "last_loss": losses[-1]}
    return {**common, "reconstructed": reconstructed, "reconstruct_minutes": round(reconstruct_minutes, 2),
            "reconstruct_settings": extract(settings, ReconstructSettings).__dict__,
            "blocks": summary["blocks"] if summary else [], "reconstructed_kd": kd}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, metavar="CRITERION:N:M:ALLOCATION")
    p.add_argument("--model", default="smollm2-135m", help="packaged name or folder (default smollm2-135m)")
    p.add_argument("--plan", action="append", default=[], metavar="N:M=PLAN.json",
                   help="the MSP plan of that sparsity from a plan file (msp prune writes <output>/plan.json) "
                        "instead of the stored SmolLM2 search results (repeatable)")
    p.add_argument("--epochs", type=int, default=4, help="reconstruction epochs per block (default 4; 0 = the plain "
                   "prune only, no reconstruction column)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other job setting, e.g. reconstruct_lr=0.01 (repeatable)")
    p.add_argument("--kd-minutes", type=float, default=15.0, help="KD training minutes after reconstruction (0 = none)")
    p.add_argument("--kd-rows", nargs="*", default=KD_ROWS, metavar="ROW", help="the rows that get KD after "
                   "reconstruction (default: the MSP Wanda rows)")
    p.add_argument("--kd-lr", type=float, default=1e-4)
    p.add_argument("--kd-windows", type=int, default=128, help="distinct KD windows of 512 tokens, 4 a step, cycled")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--out", default=str(RESULTS / "reconstruct.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--dense", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.plans = dict(item.split("=", 1) for item in args.plan)
    if args.one:
        emit(one(args, args.one))
        return
    path = Path(args.out)
    record = read(path)
    record.update(command="python benchmarks/" + " ".join([Path(__file__).name, *sys.argv[1:]]),
                  model=args.model, calib_corpus="c4", eval_corpus="wikipedia",
                  calibration=f"{args.calib_samples} x {args.calib_seqlen} tokens of c4",
                  eval_tokens=args.eval_windows * 1024, kd_minutes=args.kd_minutes, kd_rows=args.kd_rows,
                  machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    passthrough = ["--model", args.model, *[a for item in args.plan for a in ("--plan", item)],
                   "--epochs", str(args.epochs), "--kd-lr", str(args.kd_lr),
                   "--kd-windows", str(args.kd_windows), "--calib-samples", str(args.calib_samples),
                   "--calib-seqlen", str(args.calib_seqlen), "--eval-windows", str(args.eval_windows),
                   *[a for s in args.set for a in ("--set", s)]]
    for row in args.rows:
        dense = [] if record.get("dense_ppl") else ["--dense"]
        kd = ["--kd-minutes", str(args.kd_minutes if row in args.kd_rows else 0)]
        result = run_fresh(__file__, ["--one", row, *passthrough, *kd, *dense], row)
        if result is None:
            continue
        if result["dense"]:
            record["dense_ppl"], record["dense_interval"] = result["dense"]["ppl"], result["dense"]["interval"]
        result["command"] = record["command"]  # rows of one file can come from several invocations
        add_row(path, record, result)
        kd = result["reconstructed_kd"]
        done = result["reconstructed"]
        print(row, f"pruned {result['pruned']['ppl']:.1f}" + (f" -> reconstructed {done['ppl']:.1f} in "
              f"{result['reconstruct_minutes']} min" if done else "") + (f" -> + KD {kd['ppl']:.1f}" if kd else ""),
              flush=True)


if __name__ == "__main__":
    main()
