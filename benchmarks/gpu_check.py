"""The GPU check: the pruning pipeline on a CUDA device, stage times, peak memory, plans.

    python benchmarks/gpu_check.py --out DIR              # on the lent GPU (see below)
    python benchmarks/gpu_check.py --device cpu --dtype float32   # the CPU reference, on this bench

The device machine reaches no package index or model hub and takes at most 64 MiB of files, so
the check needs nothing but the repository and the machine's own torch + transformers: a
Llama-shaped model with SmolLM2-135M's shape (``--size 135m``) or a 1.1B one (``--size 1b``),
random weights from a fixed seed, and random token windows. Perplexities of a random model say
nothing about quality; what the check measures is speed, memory and agreement: stage by stage
(dense perplexity, uniform Wanda 3:4 prune, the MSP search on a small budget, its prune) the wall
seconds and peak device memory (CUDA ``max_memory_allocated``; on a CPU the resident high-water
mark), the plan the search finds in float32 on the device against the same run on the CPU
(``--device cpu`` writes results/gpu_check_cpu.json), and the same stages in bf16. On an sm80+
GPU it also times one 2048 x 8192 linear as a 2:4 semi-structured tensor against dense. Last,
``--offload-size`` (default 1b) runs the same stages on one model twice, in memory and with its
blocks offloaded to memory-mapped files and brought onto the device one at a time
(`msp_callback.offload`): same plan expected, far less peak device memory.

On a lent H200 (device tool), from the repository root:
    bash benchmarks/gpu_check.sh          # = PYTHONPATH=. python3 benchmarks/gpu_check.py --out $OUT, 8 min at most
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"

SIZES = {  # Llama shapes: SmolLM2-135M's, and TinyLlama-1.1B's
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256),
}


def build_model(size: str, seed: int, device: torch.device, dtype: torch.dtype, offload_folder: str | None = None):
    """The random model on ``device``; with ``offload_folder`` its blocks stay in memory-mapped
    files there and come onto the device one at a time (`msp_callback.offload`)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from msp_callback.offload import offload_to_disk

    torch.manual_seed(seed)
    config = LlamaConfig(**SIZES[size], max_position_embeddings=2048, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config)  # float32 on the CPU: the same weights everywhere
    if offload_folder is not None:
        offload_to_disk(model, offload_folder, dtype, device, always_copy=True)
        return model.eval()
    return model.to(device=device, dtype=dtype).eval()


def token_windows(vocab: int, rows: int, seqlen: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, seqlen), generator=torch.Generator().manual_seed(seed))


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
        except OSError:
            pass


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stage(record: dict, name: str, device: torch.device, fn):
    peak_reset(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    record[name] = {"seconds": round(time.perf_counter() - start, 3), "peak_mib": round(peak_mib(device), 1)}
    return out


def pipeline(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, size: str | None = None,
             offload_folder: str | None = None) -> dict:
    """Dense perplexity, uniform Wanda 3:4, then the MSP search and its prune, each stage timed
    (``offload_folder``: the same with the blocks offloaded to files there)."""
    from msp_callback.allocation import make_plan
    from msp_callback.evaluate import perplexity
    from msp_callback.models import find_blocks, measure_sparsity
    from msp_callback.nm import remove_masks
    from msp_callback.plan import SparsityPlan
    from msp_callback.pruner import prune
    from msp_callback.search.runner import SearchSettings

    stages: dict = {}
    size = size or args.size
    model = stage(stages, "build", device, lambda: build_model(size, args.seed, device, dtype, offload_folder))
    vocab = model.config.vocab_size
    calibration = list(token_windows(vocab, args.calib_samples, args.seqlen, args.seed + 1).split(4))
    fitness = token_windows(vocab, 4, args.seqlen, args.seed + 2)
    windows = token_windows(vocab, args.eval_windows, args.seqlen, args.seed + 3)
    dense_weights = {k: v.clone() for k, v in model.state_dict().items()}

    def ppl(name: str) -> float:
        return stage(stages, name, device, lambda: perplexity(model, windows, progress=False))

    def restore() -> None:
        remove_masks(model, bake=False)
        model.load_state_dict(dense_weights)

    result = {"dense_ppl": ppl("dense perplexity")}
    uniform = SparsityPlan.uniform(3, 4, len(find_blocks(model)), criterion="wanda")
    stage(stages, "uniform prune", device, lambda: prune(model, uniform, calibration, progress=False))
    result["uniform_ppl"] = ppl("uniform perplexity")
    restore()
    search = SearchSettings(population=args.population, generations=args.generations,
                            cache_storage="disk" if offload_folder else "auto")
    plan = stage(stages, "msp search", device, lambda: make_plan(
        "msp", model, 3, 4, "wanda", calibration=calibration, fitness_windows=fitness, search=search,
        seed=args.seed, progress=False))
    stage(stages, "msp prune", device, lambda: prune(model, plan, calibration, progress=False))
    result.update(msp_ppl=ppl("msp perplexity"), msp_levels=plan.levels,
                  fitness_evaluations=plan.metadata.get("fitness_evaluations"),
                  measured_sparsity_pct=measure_sparsity(model).pruned_linears,
                  parameters=sum(p.numel() for p in model.parameters()), stages=stages)
    return result


def semi_structured_speed(device: torch.device, repeats: int) -> dict:
    """Median milliseconds of (4096 x 2048) @ (2048 x 8192)^T in bf16: dense vs 2:4 semi-structured."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return {"skipped": "2:4 semi-structured kernels need an sm80+ CUDA device"}
    from torch.sparse import to_sparse_semi_structured

    from msp_callback.nm import nm_mask

    weight = torch.randn(8192, 2048, device=device, dtype=torch.bfloat16)
    weight = weight * nm_mask(weight.abs().float(), 2, 4)
    x = torch.randn(4096, 2048, device=device, dtype=torch.bfloat16)
    sparse = to_sparse_semi_structured(weight)

    def timed(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize(device)
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    def dense_fn():
        return torch.nn.functional.linear(x, weight)

    def sparse_fn():
        return torch.nn.functional.linear(x, sparse)

    same = torch.allclose(dense_fn().float(), sparse_fn().float(), rtol=2e-2, atol=2e-1)
    dense_ms, sparse_ms = timed(dense_fn), timed(sparse_fn)
    return {"dense_ms": round(dense_ms, 4), "semi_structured_ms": round(sparse_ms, 4),
            "speedup": round(dense_ms / sparse_ms, 3), "same_result": bool(same), "repeats": repeats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="precision of the timed run; on a GPU a float32 run is added for the plan comparison")
    p.add_argument("--size", default="135m", choices=sorted(SIZES))
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--calib-samples", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=20, help="repeats of the 2:4 timing")
    p.add_argument("--offload-size", default="1b", choices=["", *sorted(SIZES)],
                   help="model for the offloaded-against-in-memory check ('' skips it)")
    p.add_argument("--out", default=None, help="folder for the JSON (default: benchmarks/results)")
    p.add_argument("--name", default=None, help="default: gpu_check, or gpu_check_cpu on a CPU")
    args = p.parse_args()
    device = torch.device(args.device)
    name = args.name or ("gpu_check_cpu" if device.type == "cpu" else "gpu_check")
    result = {"command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]), "arguments": vars(args),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "note": "random weights and random tokens: speed, memory and plan agreement, not quality"}
    runs = {args.dtype: pipeline(args, device, getattr(torch, args.dtype))}
    if device.type == "cuda" and args.dtype != "float32":
        runs["float32"] = pipeline(args, device, torch.float32)
    result["runs"] = runs
    if args.offload_size:  # the same model in memory and with its blocks offloaded: same plan, less device memory
        import tempfile

        dtype = getattr(torch, args.dtype)
        result["offload"] = {"size": args.offload_size, "in_memory": pipeline(args, device, dtype, args.offload_size)}
        with tempfile.TemporaryDirectory() as folder:
            result["offload"]["offloaded"] = pipeline(args, device, dtype, args.offload_size, folder)
        a, b = result["offload"]["in_memory"], result["offload"]["offloaded"]
        result["offload"]["same_plan"] = a["msp_levels"] == b["msp_levels"]
    result["semi_structured_2of4"] = semi_structured_speed(device, args.repeats)
    folder = Path(args.out) if args.out else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "arguments"}, indent=2))


if __name__ == "__main__":
    main()
