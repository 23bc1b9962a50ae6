"""Where does block-wise reconstruction help or hurt? Plain pruning against reconstruction, block by block.

    python benchmarks/reconstruct_diagnose.py --model gemma3-270m \
        --plan benchmarks/results/plans/gemma3-270m-wanda-3of4.json --set reconstruct_loss=token

One plan (a plan file, or uniform at ``--sparsity``) is pruned plainly (P), then, from the dense
weights again, with reconstruction (R, `msp_callback.reconstruct` with the job's settings and any
``--set``). For both and for the dense model, on ``--eval-windows`` held-out Wikipedia windows of
1024 tokens: perplexity over the whole windows and over their first 512 tokens (sliding-window
layers see no difference below their window), and each layer's hidden state's error relative to the
dense model's (mean over tokens of |h - h_dense|^2 / |h_dense|^2, tokens before and from position
512 apart; the last entry is after the final norm). ``--hybrids K ...``: perplexity with blocks
below K taken from R and the rest from P. Writes results/reconstruct_diagnose.json (a row per run).
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

from reconstruct import _value  # noqa: E402
from results_file import add_row, read  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--plan", help="a plan file (msp prune writes <output>/plan.json); default uniform at --sparsity")
    p.add_argument("--sparsity", default="3:4")
    p.add_argument("--criterion", default="wanda")
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other job setting (repeatable)")
    p.add_argument("--hybrids", nargs="*", type=int, default=[], metavar="K")
    p.add_argument("--out", default=str(RESULTS / "reconstruct_diagnose.json"))
    args = p.parse_args()

    import torch

    from msp_callback.evaluate import perplexity
    from msp_callback.job import PruneSettings, _prune, prepare
    from msp_callback.models import find_blocks
    from msp_callback.nm import remove_masks
    from msp_callback.plan import SparsityPlan, parse_nm
    from msp_callback.pruner import prune

    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    settings = PruneSettings(model=args.model, sparsity=args.sparsity, criterion=args.criterion, calib_samples=32,
                             calib_seqlen=512, eval_windows=args.eval_windows, reconstruct_epochs=args.epochs,
                             progress=False, **overrides)
    inputs = prepare(settings)
    model, windows = inputs.model, inputs.windows
    model.eval()
    blocks = find_blocks(model)
    n, m = parse_nm(args.sparsity)
    levels = SparsityPlan.load(args.plan).levels if args.plan else [n] * len(blocks)
    plan = SparsityPlan(m=m, target=n, levels=levels, criterion=args.criterion, allocation="msp" if args.plan else "uniform")

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: t.clone() for k, t in blocks.state_dict().items()}

    dense_state = snapshot()

    @torch.no_grad()
    def hidden() -> list[list[torch.Tensor]]:
        return [[h[0].float() for h in model(w[None], output_hidden_states=True).hidden_states] for w in windows]

    def measure() -> dict:
        return {"ppl": perplexity(model, windows, progress=False), "ppl_first_512": perplexity(model, windows[:, :512], progress=False)}

    def errors(states: list[list[torch.Tensor]]) -> list[list[float]]:
        def rel(a, b):
            return float(((a - b).pow(2).sum(-1) / b.pow(2).sum(-1)).mean())
        return [[round(sum(rel(states[i][layer][part], reference[i][layer][part]) for i in range(len(states))) / len(states), 4)
                 for part in (slice(0, 512), slice(512, None))] for layer in range(len(reference[0]))]

    result = {"dense": measure()}
    reference = hidden()
    prune(model, plan, inputs.calibration, progress=False)
    result["plain"] = {**measure(), "layer_error": errors(hidden())}
    remove_masks(model, bake=True)
    plain_state = snapshot()
    blocks.load_state_dict(dense_state)
    t0 = time.perf_counter()
    summary = _prune(settings, inputs, plan)
    result["reconstruct_minutes"] = round((time.perf_counter() - t0) / 60, 2)
    result["reconstructed"] = {**measure(), "layer_error": errors(hidden())}
    remove_masks(model, bake=True)
    rebuilt_state = snapshot()
    result["hybrids"] = {}
    for k in args.hybrids:
        blocks.load_state_dict({name: (rebuilt_state if int(name.split(".")[0]) < k else plain_state)[name]
                                for name in plain_state})
        result["hybrids"][str(k)] = perplexity(model, windows, progress=False)
    print({k: v for k, v in result.items() if k != "hybrids"}, result["hybrids"], flush=True)
    path = Path(args.out)
    record = read(path)
    record.update(what="benchmarks/reconstruct_diagnose.py: plain pruning (plain) against reconstruction (reconstructed)",
                  machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    add_row(path, record, {"row": " ".join(sys.argv[1:]), "command": "python benchmarks/" + " ".join(
        [Path(__file__).name, *sys.argv[1:]]), "model": args.model, "levels": levels, "eval_tokens": int(windows.numel()),
        "reconstruct_settings": {k: v for k, v in summary.items() if k.startswith("reconstruct_")}, **result,
        "blocks": summary["blocks"], "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
