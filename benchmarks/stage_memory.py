"""Peak resident memory of each pipeline stage, in bytes per model parameter.

    python benchmarks/stage_memory.py                      # 135m (real), 0.5b and 1b (random); wanda, sparsegpt; M=4, 8
    python benchmarks/stage_memory.py --sizes 1b --offloads disk

One fresh process per (size, criterion, M, offload) runs the stages one after another on a
float32 model: calibration (one sequential pass collecting the criterion's input statistics),
Fisher (per-sample traces, as the trace init and ``--allocation fisher`` use), then the MSP search on
a small budget in two parts: building its level cache ("level cache") and scoring ("search"), prune
(sequential, masks installed) and export (`save_pruned` to a folder). `memory_probe` samples RssAnon
(anonymous memory: tensors and heap) every 20 ms; the table divides each stage's peak, less the
process's RssAnon before the model loads (interpreter and libraries), by the model's parameter
count. In memory, the weights are copied into anonymous memory after loading (transformers maps
the checkpoint file until a weight is written), so the model itself counts its 4 bytes per
parameter in every stage. With ``--offloads disk`` the weights, masks and level
cache are memory-mapped files (`msp_callback.offload`) and only the working set is anonymous. In
memory the level cache goes where ``cache_storage=auto`` puts it (beside the model when there is
room, else disk: the row records which).

135m is SmolLM2-135M (real weights); 0.5b and 1b are random-weight Llama-shaped models
(`random_models`): memory depends on shapes, not on trained values. Token counts are small
(calibration 4 x 256, Fisher 2 x 256, fitness 2 x 256): activation memory grows with them, weight
memory does not. With ``--reconstruct-epochs E`` the dense model is loaded again after the export
and the same plan pruned with E epochs of block-wise reconstruction (`msp_callback.reconstruct`:
one block's float32 weights, gradients and Adam moments beside two or three streams of hidden
states; one fitness window held out), stage "reconstruct". Writes results/stage_memory.json (rows
are added; a rerun of one row replaces it).

    python benchmarks/stage_memory.py --rows 1b:wanda:4:disk --reconstruct-epochs 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results"

from fresh_process import emit, run_fresh  # noqa: E402
from results_file import add_row, read  # noqa: E402


def model_source(size: str) -> str:
    if size == "135m":
        return "smollm2-135m"
    from random_models import random_model_folder

    return str(random_model_folder(size))


def load(size: str, offload: str):
    """The model and tokenizer; in memory, every parameter cloned into anonymous memory, as after any write
    (transformers maps the safetensors file, which RssAnon would not count)."""
    import torch

    from msp_callback.loading import load_causal_lm

    model, tokenizer = load_causal_lm(model_source(size), offload=offload)
    if offload == "none":
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.clone()
    return model, tokenizer


def one(size: str, criterion: str, m: int, offload: str, reconstruct_epochs: int = 0) -> dict:
    import gc

    import torch
    from memory_probe import MemoryProbe, read_status, trim_heap
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401  (imported before the baseline)

    import msp_callback.search.runner as runner
    from msp_callback import data
    from msp_callback.allocation import make_plan
    from msp_callback.block_walk import collect_input_stats, walk_blocks
    from msp_callback.config import ReconstructSettings
    from msp_callback.criteria import get_criterion
    from msp_callback.export import save_pruned
    from msp_callback.models import block_linears, named_block_linears
    from msp_callback.pruner import prune
    from msp_callback.reconstruct import reconstruct
    from msp_callback.search.level_cache import LevelCache
    from msp_callback.search.runner import SearchSettings
    from msp_callback.sensitivity import fisher_traces

    storage = "disk" if offload == "disk" else "auto"  # in memory: beside the model where it fits
    trim_heap()
    baseline = read_status()["RssAnon"]  # the interpreter and the libraries, before any model
    with MemoryProbe() as probe:
        with probe.stage("load"):
            model, tokenizer = load(size, offload)
        parameters = sum(p.numel() for p in model.parameters())
        block_params = sum(mod.weight.numel() for mod in named_block_linears(model).values())
        tokens = data.tokenize(tokenizer, data.load_corpus("c4")[:200])
        calibration = data.sample_calibration(tokens, 4, 256, seed=0)
        fitness = torch.cat(data.sample_calibration(tokens, 2, 256, seed=1))
        crit = get_criterion(criterion)

        with probe.stage("calibration"):
            def collect(index, block, inputs) -> None:  # statistics only: the block's outputs are run afterwards
                collect_input_stats(block, block_linears(block), inputs, crit.statistic)

            walk_blocks(model, calibration, collect, progress=False, needs_inputs=crit.statistic != "none")
        with probe.stage("fisher"):
            fisher_traces(model, calibration[:2], progress=False, gradient_checkpointing=offload == "disk")
        placed: list[str] = []

        class LabelledCache(LevelCache):  # the search's level cache, then its scoring, as two labels
            def __init__(self, *args, **kwargs):
                probe.label = "level cache"
                super().__init__(*args, **kwargs)
                placed.append(self.store.kind)
                probe.label = "search"

        runner.LevelCache = LabelledCache
        with probe.stage("search"):
            plan = make_plan("msp", model, 3 * m // 4, m, criterion, calibration=calibration,
                             fitness_windows=fitness, progress=False,
                             search=SearchSettings(population=4, generations=1, cache_storage=storage))
        with probe.stage("prune"):
            prune(model, plan, calibration, progress=False)
        with tempfile.TemporaryDirectory() as folder, probe.stage("export"):
            save_pruned(model, Path(folder) / "model", plan, drop_pruned_blocks=False)
        if reconstruct_epochs:  # the same plan pruned again, from the dense weights, with block-wise reconstruction
            del model
            gc.collect()
            trim_heap()
            model, _ = load(size, offload)
            with probe.stage("reconstruct"):
                reconstruct(model, plan, calibration, ReconstructSettings(reconstruct_epochs=reconstruct_epochs),
                            holdout=[fitness[:1]], progress=False)
    peaks = {name: peak["RssAnon"] for name, peak in probe.peaks.items() if name != "start"}
    return {"size": size, "criterion": criterion, "m": m, "offload": offload, "parameters": parameters,
            "block_parameters": block_params, "target": f"{plan.target}:{m}", "level_cache_storage": placed[0],
            "peak_rss_anon_bytes": peaks, "peak_vm_rss_bytes": {n: p["VmRSS"] for n, p in probe.peaks.items()},
            "baseline_rss_anon_bytes": baseline,
            "bytes_per_parameter": {n: round((v - baseline) / parameters, 2) for n, v in peaks.items()},
            "seconds": {n: round(s, 1) for n, s in probe.seconds.items()}, "reconstruct_epochs": reconstruct_epochs,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["135m", "0.5b", "1b"])
    p.add_argument("--criteria", nargs="+", default=["wanda", "sparsegpt"])
    p.add_argument("--ms", nargs="+", type=int, default=[4, 8])
    p.add_argument("--offloads", nargs="+", default=["none"], choices=("none", "disk"))
    p.add_argument("--rows", nargs="+", metavar="SIZE:CRITERION:M:OFFLOAD",
                   help="run these rows in this order instead of the grid (e.g. 1b:wanda:4:disk)")
    p.add_argument("--reconstruct-epochs", type=int, default=0, help="also measure block-wise reconstruction: after the "
                   "export, the dense model is loaded again and the same plan pruned with this many reconstruction "
                   "epochs over the calibration rows (stage \"reconstruct\"; default 0 = not measured)")
    p.add_argument("--one", nargs=5, metavar=("SIZE", "CRITERION", "M", "OFFLOAD", "EPOCHS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        size, criterion, m, offload, epochs = args.one
        emit(one(size, criterion, int(m), offload, int(epochs)))
        return
    path = RESULTS / "stage_memory.json"
    record = read(path)
    record.update(command="python benchmarks/stage_memory.py", sampling_interval_s=0.02,
                  tokens="calibration 4 x 256, Fisher 2 x 256, fitness 2 x 256 tokens of c4; search 4 x 1 generation",
                  dtype="float32")
    grid = [(size, criterion, m, offload) for offload in args.offloads for size in args.sizes
            for criterion in args.criteria for m in args.ms]
    if args.rows:
        grid = [(size, criterion, int(m), offload) for size, criterion, m, offload in (r.split(":") for r in args.rows)]
    for size, criterion, m, offload in grid:
        row = run_fresh(__file__, ["--one", size, criterion, str(m), offload, str(args.reconstruct_epochs)],
                        f"{size} {criterion} M={m} {offload}")
        if row is None:
            continue
        add_row(path, record, row, key=lambda r: (r["size"], r["criterion"], r["m"], r["offload"]))
        print(size, criterion, m, offload, row["bytes_per_parameter"], flush=True)


if __name__ == "__main__":
    main()
