"""Compress, then recover with LoRA, without losing the sparsity.

SmolLM2-135M is pruned to mixed 3:4 (75%) with MSP levels and Wanda, finetuned briefly with a
sparsity-preserving LoRA on C4 text, merged (still exactly the plan's zeros), exported as a plain
transformers folder with fully pruned blocks removed, and reloaded with AutoModelForCausalLM.
The perplexity on held-out Wikipedia windows is printed after every step.

    python examples/compress_then_lora.py                 # ~35 min here (1 thread, beside another job)
    python examples/compress_then_lora.py --steps 10 --eval-windows 4 --generations 1   # a quick look

The same job as a recipe: ``msp run recipes/compress_then_lora.yaml``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from msp_callback.allocation import make_plan
from msp_callback.data import sample_calibration
from msp_callback.evaluate import perplexity
from msp_callback.export import save_pruned
from msp_callback.job import PruneSettings, prepare
from msp_callback.lora import sparse_lora, train_adapters
from msp_callback.models import measure_sparsity
from msp_callback.plan import SparsityPlan, parse_nm
from msp_callback.pruner import prune
from msp_callback.search.runner import SearchSettings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", default="3:4", help="N:M, N pruned of M (default: %(default)s = 75%%)")
    p.add_argument("--plan", help="use this plan.json instead of searching")
    p.add_argument("--search", default="paper", choices=("paper", "level-switch"),
                   help="the MSP search (paper: what the README's numbers were measured with)")
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="LoRA steps of 4 x 256 C4 tokens")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-windows", type=int, default=16, help="held-out 1024-token Wikipedia windows")
    p.add_argument("--out", default="runs/compress_then_lora_example", help="export folder (replaced)")
    p.add_argument("--json", help="write the perplexities here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # Model, 16 x 512 C4 calibration windows, held-out Wikipedia windows.
    inputs = prepare(PruneSettings(calib_samples=16, calib_seqlen=512, eval_windows=args.eval_windows))
    model, windows = inputs.model, inputs.windows
    ppl = {"dense": perplexity(model, windows, desc="dense")}

    # 1. Prune to mixed N:M: levels from a small MSP search (or a saved plan), then Wanda.
    n, m = parse_nm(args.sparsity)
    if args.plan:
        plan = SparsityPlan.load(args.plan)
    else:
        plan = make_plan("msp", model, n, m, "wanda", calibration=inputs.calibration,
                         fitness_windows=inputs.fitness_windows,
                         search=SearchSettings(search=args.search, population=args.population,
                                                 generations=args.generations))
    prune(model, plan, inputs.calibration)
    ppl["pruned"] = perplexity(model, windows, desc="pruned")

    # 2. LoRA with peft, made sparsity-preserving: the update is masked like the weight it adapts.
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    sparse_lora(peft_model)
    train = sample_calibration(inputs.calib_tokens, 4 * args.steps, 256, seed=2, bos_token_id=inputs.bos_id, batch_size=4)
    train_adapters(peft_model, train, lr=args.lr)
    peft_model.eval()
    ppl["after LoRA"] = perplexity(peft_model, windows, desc="after LoRA")

    # 3. Merge with peft's own call: the model is exactly as sparse as the plan.
    merged = peft_model.merge_and_unload()
    ppl["after merge"] = perplexity(merged, windows, desc="after merge")
    sparsity = measure_sparsity(merged).pruned_linears

    # 4. Export a plain transformers folder (blocks at level M removed) and reload it plainly.
    record = save_pruned(merged, args.out, plan, inputs.tokenizer, overwrite=True)
    reloaded = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    ppl["after reload"] = perplexity(reloaded, windows, desc="after reload")

    print(f"\nsmollm2-135m, {plan.describe()}")
    print(f"measured sparsity of the block linears after merge: {sparsity:.2f}%")
    print(f"export: removed blocks {record.removed_blocks}, parameters {record.parameters_before:,} -> {record.parameters_after:,}")
    for stage, value in ppl.items():
        print(f"  {stage:>13}: {value:,.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "perplexity": ppl, "levels": plan.levels, "sparsity_after_merge_pct": sparsity,
            "removed_blocks": record.removed_blocks, "parameters_before": record.parameters_before,
            "parameters_after": record.parameters_after, "eval_tokens": int(windows.numel()),
            "lora_train_tokens": 4 * args.steps * 256, "threads": torch.get_num_threads(), "arguments": vars(args),
        }, indent=2))


if __name__ == "__main__":
    main()
