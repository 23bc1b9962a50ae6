"""Size, load time and exactness of the compact N:M export against the plain one.

    python benchmarks/compact_export.py                 # SmolLM2-135M, Wanda 3:4, the stored MSP plan

Prunes SmolLM2-135M with Wanda at the MSP 3:4 levels of results/msp_search.json (calibration
16 x 512 c4 tokens), then exports it twice with every block kept (`save_pruned(...,
drop_pruned_blocks=False)`), plain and compact, and once each with fully pruned blocks dropped.
Reports the decoder blocks' stored bytes against their dense bytes (the model before pruning, in
its dtype), the folders' weight bytes, the median load time of ``--repeats`` loads with
`load_pruned`, and whether the compact model's weights, masks and logits equal the pruned model's
bit for bit; then damages a copy of the compact file and records the error. Writes
results/compact_export.json.
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

sys.path.insert(0, str(Path(__file__).parent.parent))

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import torch
    from safetensors import safe_open

    from msp_callback.export import COMPACT_FILE, ExportError, load_pruned, save_pruned, weight_bytes
    from msp_callback.job import PruneSettings, prepare
    from msp_callback.models import block_linears, blocks_path, find_blocks
    from msp_callback.nm import mask_of
    from msp_callback.plan import SparsityPlan
    from msp_callback.pruner import prune

    torch.set_num_threads(2)
    record = json.loads((RESULTS / "msp_search.json").read_text())
    levels = next(r["levels"] for r in record["rows"] if r["allocation"] == "msp")
    inputs = prepare(PruneSettings(calib_samples=16, calib_seqlen=512, eval_windows=2, progress=False))
    model = inputs.model
    prefix = blocks_path(model) + "."
    dense_block_bytes = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k.startswith(prefix))
    plan = SparsityPlan(m=4, target=3, levels=levels, criterion="wanda", allocation="msp")
    prune(model, plan, inputs.calibration, progress=False)
    probe = inputs.windows[:1, :256]
    with torch.no_grad():
        reference = model(probe).logits

    out: dict = {"command": "python benchmarks/compact_export.py", "model": "smollm2-135m", "plan": "MSP 3:4 (wanda), "
                 "levels of results/msp_search.json", "levels": levels, "dense_block_bytes": dense_block_bytes,
                 "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                 "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fmt in ("plain", "compact"):
            for drop in (False, True):
                folder = tmp / f"{fmt}-{'drop' if drop else 'all'}"
                started = time.perf_counter()
                save_pruned(model, folder, plan, inputs.tokenizer, drop_pruned_blocks=drop, format=fmt)
                out[f"{fmt}_{'drop' if drop else 'all'}"] = {
                    "save_seconds": round(time.perf_counter() - started, 2), "weight_bytes": weight_bytes(folder),
                    "folder_bytes": sum(f.stat().st_size for f in folder.iterdir())}
        compact_file = tmp / "compact-all" / COMPACT_FILE
        with safe_open(str(compact_file), framework="pt") as handle:
            stored = sum(handle.get_tensor(k).numel() * handle.get_tensor(k).element_size()
                         for k in handle.keys() if k.startswith(prefix))
        out["compact_block_bytes"] = stored
        out["compact_block_fraction"] = stored / dense_block_bytes
        for fmt in ("plain", "compact"):
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                loaded, _ = load_pruned(tmp / f"{fmt}-all")
                times.append(time.perf_counter() - started)
            out[f"{fmt}_all"]["load_seconds_median"] = statistics.median(times)
            out[f"{fmt}_all"]["load_seconds"] = times
        loaded, _ = load_pruned(tmp / "compact-all")
        same_weights = same_masks = True
        for original, back in zip(find_blocks(model), find_blocks(loaded)):
            for name, module in block_linears(original).items():
                other = block_linears(back)[name]
                same_weights &= torch.equal(module.weight, other.weight)
                same_masks &= torch.equal(mask_of(module), mask_of(other))
        with torch.no_grad():
            same_logits = torch.equal(loaded(probe).logits, reference)
        out["round_trip"] = {"weights_identical": same_weights, "masks_identical": same_masks,
                             "logits_identical": same_logits}
        damaged = tmp / "damaged"
        shutil.copytree(tmp / "compact-all", damaged)
        data = (damaged / COMPACT_FILE).read_bytes()
        (damaged / COMPACT_FILE).write_bytes(data[: len(data) // 2])
        try:
            load_pruned(damaged)
            out["truncated_file"] = "loaded (a bug)"
        except ExportError as error:
            out["truncated_file"] = str(error).replace(str(damaged), "<folder>")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compact_export.json").write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "levels"}, indent=2))


if __name__ == "__main__":
    main()
