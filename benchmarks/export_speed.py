"""What removing fully pruned blocks buys at inference, on this CPU (issue: export drops level-M blocks).

    python benchmarks/export_speed.py             # msp 3:4 plan from results/msp_search.json
    python benchmarks/export_speed.py --repeats 3 --new-tokens 32   # quicker

The model is pruned with Wanda at the levels of a saved MSP plan, then measured three ways, side by
side and interleaved (repeat i of every variant runs before repeat i+1 of any):
  masked    the pruned model as the library leaves it (N:M parametrizations installed)
  baked     the same weights as plain tensors, every block kept (an export without dropping)
  exported  the folder written by save_pruned (level-M blocks removed), loaded by plain transformers
Each: parameters, safetensors bytes, a 1024-token forward (batch 1), and greedy generation with
a KV cache (tokens/s over the new tokens). Medians of the repeats. Writes results/export_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from msp_callback.atomic_files import atomic_write_text
from msp_callback.export import save_pruned, weight_bytes
from msp_callback.job import PruneSettings, prepare
from msp_callback.models import fingerprint
from msp_callback.plan import SparsityPlan
from msp_callback.pruner import prune

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan-from", default=str(RESULTS / "msp_search.json"), help="benchmark JSON holding an msp row")
    p.add_argument("--calib-samples", type=int, default=8, help="Wanda calibration windows (x 512 tokens)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens for generation")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--forward-tokens", type=int, default=1024)
    p.add_argument("--name", default="export_speed")
    return p.parse_args()


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    source = json.loads(Path(args.plan_from).read_text())
    levels = next(row["levels"] for row in source["rows"] if row["allocation"] == "msp")
    inputs = prepare(PruneSettings(calib_samples=args.calib_samples, calib_seqlen=512, eval_windows=1,
                                   eval_seqlen=args.forward_tokens))
    masked = inputs.model
    plan = SparsityPlan(m=4, target=3, levels=levels, criterion="wanda", allocation="msp",
                        fingerprint=fingerprint(masked))
    prune(masked, plan, inputs.calibration)

    folder = Path(tempfile.mkdtemp(prefix="msp-export-speed-"))
    record = save_pruned(masked, folder / "exported", plan, inputs.tokenizer)
    save_pruned(masked, folder / "baked", plan, drop_pruned_blocks=False)
    exported = AutoModelForCausalLM.from_pretrained(folder / "exported", dtype=torch.float32).eval()
    baked = AutoModelForCausalLM.from_pretrained(folder / "baked", dtype=torch.float32).eval()
    variants = {"masked": masked, "baked": baked, "exported": exported}

    forward_ids = inputs.windows[:1]
    prompt = forward_ids[:, : args.prompt]
    with torch.no_grad():
        reference = masked(forward_ids).logits
        max_diff = float((exported(forward_ids).logits - reference).abs().max())
        same_tokens = torch.equal(
            masked.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False, min_new_tokens=args.new_tokens),
            exported.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False, min_new_tokens=args.new_tokens))
    timings = {name: {"forward_s": [], "generate_s": []} for name in variants}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, model in variants.items():
                timings[name]["forward_s"].append(seconds(lambda: model(forward_ids)))
                timings[name]["generate_s"].append(seconds(lambda: model.generate(
                    prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)))

    sizes = {"masked": None, "baked": weight_bytes(folder / "baked"), "exported": weight_bytes(folder / "exported")}
    shutil.rmtree(folder)
    rows = {}
    for name, model in variants.items():
        forward = statistics.median(timings[name]["forward_s"])
        generate = statistics.median(timings[name]["generate_s"])
        rows[name] = {"parameters": sum(p.numel() for p in model.parameters()), "safetensors_bytes": sizes[name],
                      "blocks": model.config.num_hidden_layers, "forward_s": forward,
                      "forward_tokens_per_s": args.forward_tokens / forward,
                      "generate_tokens_per_s": args.new_tokens / generate, "all": timings[name]}
    result = {
        "command": " ".join(["python", "benchmarks/export_speed.py", *sys.argv[1:]]), "arguments": vars(args),
        "model": "smollm2-135m", "plan": plan.to_dict(), "removed_blocks": record.removed_blocks,
        "exported_vs_masked_max_logit_diff": max_diff, "same_generated_tokens": same_tokens,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "rows": rows,
        "speedup_vs_masked": {k: rows["exported"][k] / rows["masked"][k] for k in ("forward_tokens_per_s", "generate_tokens_per_s")},
        "speedup_vs_baked": {k: rows["exported"][k] / rows["baked"][k] for k in ("forward_tokens_per_s", "generate_tokens_per_s")},
    }
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("removed_blocks", "speedup_vs_masked", "speedup_vs_baked")}, indent=2))


if __name__ == "__main__":
    main()
