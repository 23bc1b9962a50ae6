"""Offloaded against in-memory: the same job on a 1B model, its peak memory, and the same result.

    python benchmarks/offload_check.py                      # 1b random Llama, wanda 3:4, msp small search

Runs `msp prune`'s job twice on one random-weight Llama-shaped model (`random_models`, saved in
float32 in the user cache on first use), each in a fresh process: once in memory, once with
``offload="disk"`` (weights, masks and level cache in memory-mapped files). Each process samples
its own RssAnon and VmRSS (`memory_probe`) and reports the plan, the pruned perplexity and a
SHA-256 of every pruned block linear's effective weight. Writes results/offload_check.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results"

from fresh_process import emit, run_fresh  # noqa: E402


def settings_for(args: argparse.Namespace, folder: Path, offload: str):
    from msp_callback.job import PruneSettings

    return PruneSettings(model=str(folder), sparsity=args.sparsity, criterion=args.criterion, allocation="msp",
                         calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, fitness_samples=2,
                         fitness_seqlen=256, eval_windows=args.eval_windows, eval_seqlen=512, population=args.population,
                         generations=args.generations, seed=0, offload=offload, reconstruct_epochs=0,
                         progress=False)


def weight_digests(model) -> dict[str, str]:
    """SHA-256 of each block linear's effective (masked) weight, one linear at a time."""
    import torch

    from msp_callback.models import named_block_linears

    out = {}
    with torch.no_grad():
        for name, module in named_block_linears(model).items():
            out[name] = hashlib.sha256(module.weight.detach().contiguous().numpy().tobytes()).hexdigest()
    return out


def one_run(args: argparse.Namespace, offload: str) -> dict:
    import torch
    from memory_probe import MemoryProbe
    from random_models import block_parameters, random_model_folder

    from msp_callback.job import prune_and_measure

    folder = random_model_folder(args.size)
    total, block = block_parameters(folder)
    with MemoryProbe() as probe:
        with probe.stage("job"):
            result, plan, inputs = prune_and_measure(settings_for(args, folder, offload))
        with probe.stage("digest"):
            digests = weight_digests(inputs.model)
    return {"offload": offload, "levels": plan.levels, "pruned_ppl": result["pruned_ppl"],
            "dense_ppl": result["dense_ppl"], "seconds": round(result["seconds"], 1),
            "fitness_evaluations": plan.metadata.get("fitness_evaluations"),
            "peak_rss_anon_bytes": probe.overall("RssAnon"), "peak_vm_rss_bytes": probe.overall("VmRSS"),
            "parameters": total, "block_parameters": block, "digests": digests,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1b", choices=("135m", "0.5b", "1b"))
    p.add_argument("--criterion", default="wanda")
    p.add_argument("--sparsity", default="3:4")
    p.add_argument("--calib-samples", type=int, default=8)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--name", default="offload_check")
    p.add_argument("--one", choices=("none", "disk"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        emit(one_run(args, args.one))
        return
    runs = {}
    for offload in ("none", "disk"):
        result = run_fresh(__file__, ["--one", offload] + sys.argv[1:], f"offload={offload}")
        if result is None:
            sys.exit(1)
        runs[offload] = result
        r = runs[offload]
        print(f"offload={offload}: levels {r['levels']} ppl {r['pruned_ppl']:.4g} peak RssAnon "
              f"{r['peak_rss_anon_bytes'] / 2**30:.2f} GiB, VmRSS {r['peak_vm_rss_bytes'] / 2**30:.2f} GiB, {r['seconds']} s")
    memory, disk = runs["none"], runs["disk"]
    differing = [k for k in memory["digests"] if memory["digests"][k] != disk["digests"].get(k)]
    summary = {"same_plan": memory["levels"] == disk["levels"], "same_pruned_weights": not differing,
               "linears_compared": len(memory["digests"]), "linears_differing": differing[:10],
               "same_perplexity": memory["pruned_ppl"] == disk["pruned_ppl"]}
    print(summary)
    for r in runs.values():
        r.pop("digests")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"command": "python benchmarks/offload_check.py " + " ".join(sys.argv[1:]), "size": args.size,
         "model": f"random-weight Llama-shaped {args.size} (benchmarks/random_models.py), float32",
         "criterion": args.criterion, "sparsity": args.sparsity,
         "calibration": f"{args.calib_samples} x {args.calib_seqlen} tokens of c4",
         "fitness": "2 x 256 tokens of c4", "evaluation": f"{args.eval_windows} x 512 tokens of held-out wikipedia",
         "search": f"population {args.population} x {args.generations} generations",
         "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "sampling_interval_s": 0.02,
         "runs": runs, **summary}, indent=2))


if __name__ == "__main__":
    main()
