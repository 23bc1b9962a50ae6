"""Perplexity against minutes of recovery, for uniform and MSP plans at the same budget.

    python benchmarks/recovery.py                                   # wanda 3:4 and 2:4, uniform and MSP, 15 min each
    python benchmarks/recovery.py --rows wanda:3:4:msp:sparse:kd wanda:3:4:msp:lora:lm --minutes 10

A row is CRITERION:N:M:ALLOCATION:METHOD:LOSS (METHOD sparse or lora, LOSS kd or lm; see
`msp_callback.recover`). Each row runs in a fresh process on SmolLM2-135M: prune with the plan
(uniform, or the MSP levels a search benchmark found and stored in results/, named below), measure
the held-out perplexity, compute the dense model's top-k targets on the recovery windows (kd), then
recover for at most ``--minutes`` of training on this machine, measuring perplexity at each
``--marks`` minute (evaluation time is not counted as training). Recovery windows come from the
calibration corpus (c4), evaluation windows from held-out Wikipedia, 40 x 1024 tokens. Writes
results/recovery.json (rows are added; a rerun of one row replaces it) and results/recovery.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results"

from fresh_process import emit, run_fresh  # noqa: E402
from results_file import add_row, read  # noqa: E402

# the MSP plans: the best plan of each search benchmark run (its own settings are in the file)
PLAN_SOURCES = {("wanda", "3:4"): "msp_search.json", ("wanda", "2:4"): "msp_search_2of4.json",
                ("sparsegpt", "3:4"): "msp_search_sparsegpt_3of4_mid.json"}
DEFAULT_ROWS = ["wanda:3:4:msp:sparse:kd", "wanda:3:4:uniform:sparse:kd", "wanda:2:4:msp:sparse:kd",
                "wanda:2:4:uniform:sparse:kd"]


def msp_levels(criterion: str, sparsity: str) -> tuple[list[int], str]:
    name = PLAN_SOURCES.get((criterion, sparsity))
    if name is None:
        raise SystemExit(f"no stored MSP plan for {criterion} {sparsity}: run benchmarks/msp_search.py for it first")
    record = json.loads((RESULTS / name).read_text())
    return next(r["levels"] for r in record["rows"] if r["allocation"] == "msp"), name


def one(args: argparse.Namespace, row: str) -> dict:
    import torch

    from msp_callback.config import RecoverSettings, extract
    from msp_callback.evaluate import perplexity_report
    from msp_callback.job import PruneSettings, prepare, recovery_inputs
    from msp_callback.plan import SparsityPlan, parse_nm
    from msp_callback.pruner import prune
    from msp_callback.recover import recover

    criterion, n, m, allocation, method, loss = row.split(":")
    sparsity = f"{n}:{m}"
    lr = args.lr if method == "sparse" else args.lora_lr
    settings = PruneSettings(sparsity=sparsity, criterion=criterion, calib_samples=args.calib_samples,
                             eval_windows=args.eval_windows, recover_steps=args.max_steps, recover_method=method,
                             recover_loss=loss, recover_lr=lr, recover_windows=args.windows,
                             recover_batch_size=args.batch_size, recover_seqlen=args.seqlen,
                             recover_max_minutes=args.minutes, progress=False)
    n, m = parse_nm(sparsity)
    inputs = prepare(settings)
    model = inputs.model
    blocks = len(model.model.layers)
    if allocation == "msp":
        levels, source = msp_levels(criterion, sparsity)
    else:
        levels, source = [n] * blocks, None
    plan = SparsityPlan(m=m, target=n, levels=levels, criterion=criterion, allocation=allocation)

    def report() -> dict:
        was_training = model.training
        model.eval()
        r = perplexity_report(model, inputs.windows, progress=False)
        model.train(was_training)
        return {"ppl": r.perplexity, "interval": list(r.interval())}

    dense = report() if args.dense else None
    start = time.perf_counter()
    recovery, teacher = recovery_inputs(settings, inputs)  # on the dense model
    teacher_seconds = time.perf_counter() - start
    prune(model, plan, inputs.calibration, progress=False)
    pruned = report()
    curve = [{"minutes": 0.0, "steps": 0, **pruned}]
    marks = sorted(args.marks)
    clock = {"train": 0.0, "since": time.perf_counter()}

    def on_step(step: int, loss_value: float) -> None:
        clock["train"] += time.perf_counter() - clock["since"]
        if marks and clock["train"] >= marks[0] * 60:
            marks.pop(0)
            curve.append({"minutes": round(clock["train"] / 60, 2), "steps": step, **report()})
        clock["since"] = time.perf_counter()

    with torch.random.fork_rng(devices=[]):
        losses = recover(model, recovery, extract(settings, RecoverSettings), teacher, progress=False,
                         on_step=on_step, seed=0)
    clock["train"] += time.perf_counter() - clock["since"]
    final = report() if curve[-1]["steps"] != len(losses) else {k: curve[-1][k] for k in ("ppl", "interval")}
    if curve[-1]["steps"] != len(losses):
        curve.append({"minutes": round(clock["train"] / 60, 2), "steps": len(losses), **final})
    return {"row": row, "criterion": criterion, "sparsity": sparsity, "allocation": allocation, "method": method,
            "loss": loss, "lr": lr, "levels": levels, "plan_source": source, "dense": dense, "pruned": pruned,
            "recovered": final, "curve": curve, "steps": len(losses), "train_minutes": round(clock["train"] / 60, 2),
            "first_loss": losses[0], "last_loss": losses[-1], "teacher_seconds": round(teacher_seconds, 1),
            "tokens_per_step": args.batch_size * args.seqlen, "distinct_windows": args.windows,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in record["rows"]:
        curve = row["curve"]
        ax.plot([c["minutes"] for c in curve], [c["ppl"] for c in curve], marker="o",
                label=f"{row['criterion']} {row['sparsity']} {row['allocation']} ({row['method']}, {row['loss']})")
    if record.get("dense_ppl"):
        ax.axhline(record["dense_ppl"], color="k", linestyle=":", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("minutes of recovery (training only, this machine)")
    ax.set_ylabel("held-out perplexity")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, metavar="CRITERION:N:M:ALLOCATION:METHOD:LOSS")
    p.add_argument("--minutes", type=float, default=15.0, help="training minutes per row (default 15)")
    p.add_argument("--marks", type=float, nargs="+", default=[5.0, 10.0], help="minutes at which to measure on the way")
    p.add_argument("--max-steps", type=int, default=10000, help="steps cap (the minutes usually end a row first)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate for sparse (full) recovery")
    p.add_argument("--lora-lr", type=float, default=1e-3, help="AdamW learning rate for LoRA recovery")
    p.add_argument("--windows", type=int, default=128, help="distinct recovery windows, cycled")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--out", default=str(RESULTS / "recovery.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--dense", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        emit(one(args, args.one))
        return
    path = Path(args.out)
    record = read(path)
    record.update(command="python benchmarks/recovery.py", model="smollm2-135m", calib_corpus="c4",
                  eval_corpus="wikipedia", eval_tokens=args.eval_windows * 1024, minutes=args.minutes,
                  recovery_windows=f"{args.windows} x {args.seqlen} tokens of c4, {args.batch_size} per step",
                  machine=f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores")
    passthrough = ["--minutes", str(args.minutes), "--max-steps", str(args.max_steps), "--lr", str(args.lr),
                   "--lora-lr", str(args.lora_lr), "--windows", str(args.windows), "--batch-size", str(args.batch_size),
                   "--seqlen", str(args.seqlen), "--calib-samples", str(args.calib_samples),
                   "--eval-windows", str(args.eval_windows), "--marks", *map(str, args.marks)]
    for row in args.rows:
        dense = [] if record.get("dense_ppl") else ["--dense"]
        result = run_fresh(__file__, ["--one", row, *passthrough, *dense], row)
        if result is None:
            continue
        if result["dense"]:
            record["dense_ppl"], record["dense_interval"] = result["dense"]["ppl"], result["dense"]["interval"]
        add_row(path, record, result)
        plot(record, path.with_suffix(".png"))
        print(row, f"pruned {result['pruned']['ppl']:.1f} -> recovered {result['recovered']['ppl']:.1f} "
              f"in {result['train_minutes']} min ({result['steps']} steps)", flush=True)


if __name__ == "__main__":
    main()
