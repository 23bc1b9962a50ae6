"""The GPU check: every device path of the library on a CUDA device, stage times, peak memory, plans.

    python benchmarks/gpu_check.py --out DIR              # on the lent GPU (see below)
    python benchmarks/gpu_check.py --device cpu --dtype float32   # the CPU reference, on this bench
    python benchmarks/gpu_check.py --device cpu --size tiny --offload-size tiny --out /tmp/x  # a dry run

The device machine reaches no package index or model hub and takes at most 64 MiB of files, so
the check needs nothing but the repository and the machine's own torch + transformers: a
Llama-shaped model with SmolLM2-135M's shape (``--size 135m``) or a 1.1B one (``--size 1b``),
random weights from a fixed seed, and random token windows. Perplexities of a random model say
nothing about quality; what the check measures is speed, memory, agreement and that each path runs.

The JSON is written after every check (a crash or the time limit loses nothing done before), the
shortest checks first, each in its own ``try`` (an error is recorded, the next check runs):

1. ``environment``: torch, CUDA version, device, compute capability, cuSPARSELt availability.
2. ``semi_structured_speed``: one 4096 x 2048 @ (8192 x 2048)^T product, dense against 2:4 (sm80+).
3. ``to_semi_structured``: the library's conversion of a pruned model (logits, measured sparsity,
   a dense ``save_pretrained`` reload, the refused cast).
4. ``export_reload``: ``save_pruned`` plain and compact, reloaded on the device in the job's dtype.
5. ``fisher_traces``: the backward pass of the Fisher traces.
6. ``sparsegpt``: a uniform SparseGPT prune, twice: with TF32 off and on (same weights expected).
7. ``kl_fitness``: a small search scored by KL to the dense model.
8. ``recovery``: a few distillation steps (bf16 weights: float32 masters under autocast).
9. ``reconstruction``: block-wise reconstruction (Wanda 3:4, ``--reconstruct-epochs``) in ``--dtype``,
   in memory and with the blocks offloaded: pruned weights zero in the stored tensors, each block's
   error before -> after, stage time and peak memory, and how far the two forms' masks and weights agree.
10. ``pipeline``: dense perplexity, uniform Wanda 3:4, the MSP search and its prune, in ``--dtype``
    and (on a GPU) float32, whose plan is compared with the CPU reference (results/gpu_check_cpu.json).
11. ``offload``: the same stages on one ``--offload-size`` model in memory and with its blocks
    offloaded to memory-mapped files (same plan expected, far less device memory).

Both models of a comparison are built the same way: floating parameters in the dtype, buffers
(the rotary ``inv_freq``) kept in float32, as ``from_pretrained`` and ``offload_to_disk`` leave
them. ``--budget`` (seconds) stops starting new checks in time for gpu_check.sh's 8-minute limit.

On a lent H200 (device tool), from the repository root:
    bash benchmarks/gpu_check.sh          # = PYTHONPATH=. python3 benchmarks/gpu_check.py --out $OUT, 8 min at most
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
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


class Report:
    """The check's JSON, written whole after every stage."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_suffix(".tmp")
        staging.write_text(json.dumps(self.data, indent=2, default=str))
        staging.replace(self.path)


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cuda_version": torch.version.cuda, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, compute_capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), device_count=torch.cuda.device_count(),
                    cusparselt=torch.backends.cusparselt.is_available(),
                    cusparselt_version=torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None)
    else:
        info["device_name"] = platform.processor() or "cpu"
    return info


def build_model(size: str, seed: int, device: torch.device, dtype: torch.dtype, offload_folder: str | None = None):
    """The random model on ``device``: floating parameters in ``dtype``, buffers (rotary tables)
    as built, in float32, the way both ``from_pretrained`` and ``offload_to_disk`` leave them;
    with ``offload_folder`` its blocks stay in memory-mapped files there and come onto the
    device in turn, the next one prefetched (`msp_callback.offload`)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from msp_callback.offload import offload_to_disk

    torch.manual_seed(seed)
    config = LlamaConfig(**SIZES[size], max_position_embeddings=2048, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config)  # float32 on the CPU: the same weights everywhere
    if offload_folder is not None:
        offload_to_disk(model, offload_folder, dtype, device, always_copy=True)
        return model.eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.data = p.data.to(dtype)
    return model.to(device).eval()


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


class Checker:
    """Runs the checks in order, each timed and recorded, writing the report after every stage."""

    def __init__(self, args: argparse.Namespace, device: torch.device, report: Report):
        self.args, self.device, self.report = args, device, report
        self.dtype = getattr(torch, args.dtype)
        self.started = time.perf_counter()

    def stage(self, record: dict, name: str, fn: Callable):
        peak_reset(self.device)
        start = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        record[name] = {"seconds": round(time.perf_counter() - start, 3), "peak_mib": round(peak_mib(self.device), 1)}
        self.report.save()
        return out

    def run(self, name: str, fn: Callable[[dict], None], into: dict | None = None) -> None:
        """Run one check into ``into[name]`` (default: the report's "checks"); errors are recorded."""
        into = self.report.data.setdefault("checks", {}) if into is None else into
        if time.perf_counter() - self.started > self.args.budget:
            into[name] = {"skipped": f"time budget of {self.args.budget} s spent"}
            self.report.save()
            return
        record = into[name] = {}
        start = time.perf_counter()
        try:
            fn(record)
        except Exception as error:  # recorded; the next check still runs
            record["error"] = f"{type(error).__name__}: {error}"
            record["traceback"] = traceback.format_exc(limit=6)
        record["total_seconds"] = round(time.perf_counter() - start, 2)
        self.report.save()

    # ------------------------------------------------------------------ data and models
    def model(self, dtype: torch.dtype | None = None, size: str | None = None, offload_folder: str | None = None):
        return build_model(size or self.args.size, self.args.seed, self.device, dtype or self.dtype, offload_folder)

    def data(self, vocab: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        a = self.args
        calibration = list(token_windows(vocab, a.calib_samples, a.seqlen, a.seed + 1).split(4))
        return calibration, token_windows(vocab, 4, a.seqlen, a.seed + 2), token_windows(vocab, a.eval_windows, a.seqlen, a.seed + 3)

    # ------------------------------------------------------------------ the checks, shortest first
    def semi_structured_speed(self, record: dict) -> None:
        """Median milliseconds of (4096 x 2048) @ (8192 x 2048)^T in bf16: dense vs 2:4 semi-structured."""
        if self.device.type != "cuda" or torch.cuda.get_device_capability(self.device) < (8, 0):
            record["skipped"] = "2:4 semi-structured kernels need an sm80+ CUDA device"
            return
        from torch.sparse import to_sparse_semi_structured

        from msp_callback.nm import nm_mask

        weight = torch.randn(8192, 2048, device=self.device, dtype=torch.bfloat16)
        weight = weight * nm_mask(weight.abs().float(), 2, 4)
        x = torch.randn(4096, 2048, device=self.device, dtype=torch.bfloat16)
        sparse = to_sparse_semi_structured(weight)

        def timed(fn) -> float:
            fn()  # warm-up
            times = []
            for _ in range(self.args.repeats):
                torch.cuda.synchronize(self.device)
                start = time.perf_counter()
                fn()
                torch.cuda.synchronize(self.device)
                times.append((time.perf_counter() - start) * 1000)
            return statistics.median(times)

        def dense_fn():
            return torch.nn.functional.linear(x, weight)

        def sparse_fn():
            return torch.nn.functional.linear(x, sparse)

        same = torch.allclose(dense_fn().float(), sparse_fn().float(), rtol=2e-2, atol=2e-1)
        dense_ms, sparse_ms = timed(dense_fn), timed(sparse_fn)
        record.update(kernel=type(sparse).__name__, dense_ms=round(dense_ms, 4), semi_structured_ms=round(sparse_ms, 4),
                      speedup=round(dense_ms / sparse_ms, 3), same_result=bool(same), repeats=self.args.repeats)

    def to_semi_structured(self, record: dict) -> None:
        """The library's conversion on a model pruned at 2:4 (magnitude: no calibration needed)."""
        if self.device.type != "cuda":
            record["skipped"] = "needs CUDA"
            return
        from transformers import AutoModelForCausalLM

        from msp_callback.models import find_blocks, measure_sparsity
        from msp_callback.plan import SparsityPlan
        from msp_callback.pruner import prune
        from msp_callback.semistructured import SemiStructuredError, summarize, to_semi_structured

        dtype = self.dtype if self.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        model = self.model(dtype)
        prune(model, SparsityPlan.uniform(2, 4, len(find_blocks(model)), criterion="magnitude"), progress=False)
        ids = token_windows(model.config.vocab_size, 4, self.args.seqlen, self.args.seed + 4).to(self.device)
        with torch.no_grad():
            reference = model(input_ids=ids).logits.float()
            verdicts = self.stage(record, "convert", lambda: to_semi_structured(model))
            converted = self.stage(record, "forward", lambda: model(input_ids=ids).logits.float())
        kernels = {type(getattr(m, "weight", None)).__name__ for m in model.modules()}
        record.update(summary=summarize(verdicts), kernels=sorted(k for k in kernels if k.startswith("SparseSemi")),
                      max_logit_difference=float((converted - reference).abs().max()),
            measured_sparsity_pct=measure_sparsity(model).pruned_linears)
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(self.device)
            with torch.no_grad():
                record["reload_equals_converted"] = bool(torch.allclose(
                    reloaded(input_ids=ids).logits.float(), converted, rtol=2e-2, atol=2e-1))
        try:
            model.to(torch.float32)
            record["cast_refused"] = False
        except SemiStructuredError:
            record["cast_refused"] = True

    def export_reload(self, record: dict) -> None:
        """save_pruned (plain and compact), reloaded on the device in the job's dtype: same logits."""
        from transformers import AutoModelForCausalLM

        from msp_callback.export import load_pruned, save_pruned
        from msp_callback.models import find_blocks
        from msp_callback.plan import SparsityPlan
        from msp_callback.pruner import prune

        model = self.model()
        calibration, _, windows = self.data(model.config.vocab_size)
        plan = SparsityPlan.uniform(2, 4, len(find_blocks(model)), criterion="wanda")
        self.stage(record, "prune", lambda: prune(model, plan, calibration, progress=False))
        ids = windows[:2].to(self.device)
        with torch.no_grad():
            reference = model(input_ids=ids).logits
        for fmt in ("plain", "compact"):
            with tempfile.TemporaryDirectory() as folder:
                target = Path(folder) / "model"
                self.stage(record, f"save {fmt}", lambda: save_pruned(model, target, plan, format=fmt,
                                                                       probe=[calibration[0][:1]]))
                if fmt == "plain":
                    reloaded = self.stage(record, f"reload {fmt}", lambda: AutoModelForCausalLM.from_pretrained(
                        target, dtype=self.dtype).to(self.device))
                else:
                    reloaded = self.stage(record, f"reload {fmt}", lambda: load_pruned(
                        target, dtype=self.dtype)[0].to(self.device))
                with torch.no_grad():
                    record[f"{fmt}_same_logits"] = bool(torch.equal(reloaded(input_ids=ids).logits, reference))
                record[f"{fmt}_device"] = str(next(reloaded.parameters()).device)

    def fisher_traces(self, record: dict) -> None:
        from msp_callback.allocation import block_traces

        model = self.model()
        calibration, _, _ = self.data(model.config.vocab_size)
        traces = self.stage(record, "traces", lambda: block_traces(model, calibration, progress=False))
        record.update(blocks=len(traces), all_finite=all(t == t and abs(t) != float("inf") for t in traces),
                      first=traces[0], last=traces[-1])

    def sparsegpt(self, record: dict) -> None:
        """A uniform SparseGPT 2:4 prune with TF32 off and on: its Gram matrix and sweep run in
        IEEE float32 whatever the switch, so the pruned weights must be the same."""
        from msp_callback.evaluate import perplexity
        from msp_callback.models import find_blocks, named_block_linears
        from msp_callback.plan import SparsityPlan
        from msp_callback.pruner import prune

        weights = {}
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                model = self.model(torch.float32)
                calibration, _, windows = self.data(model.config.vocab_size)
                plan = SparsityPlan.uniform(2, 4, len(find_blocks(model)), criterion="sparsegpt")
                self.stage(record, f"prune tf32={tf32}", lambda: prune(model, plan, calibration, progress=False))
                weights[tf32] = {n: m.weight.detach().cpu() for n, m in named_block_linears(model).items()}
                record[f"ppl tf32={tf32}"] = perplexity(model, windows, progress=False)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
        record["same_weights_with_tf32"] = all(torch.equal(weights[False][n], weights[True][n]) for n in weights[False])

    def kl_fitness(self, record: dict) -> None:
        from msp_callback.allocation import make_plan
        from msp_callback.search.runner import SearchSettings

        model = self.model()
        calibration, fitness, _ = self.data(model.config.vocab_size)
        search = SearchSettings(population=self.args.population, generations=2, fitness="kl")
        plan = self.stage(record, "search", lambda: make_plan("msp", model, 2, 4, "wanda", calibration=calibration,
                                                             fitness_windows=fitness, search=search, progress=False))
        record.update(levels=plan.levels, best_fitness=plan.metadata["best_fitness"],
                      evaluations=plan.metadata["fitness_evaluations"])

    def recovery(self, record: dict) -> None:
        from msp_callback.config import RecoverSettings
        from msp_callback.models import find_blocks
        from msp_callback.nm import mask_of, masked_modules
        from msp_callback.plan import SparsityPlan
        from msp_callback.pruner import prune
        from msp_callback.recover import recover, teacher_targets

        model = self.model()
        calibration, _, _ = self.data(model.config.vocab_size)
        batches = [b[:2] for b in calibration]
        teacher = self.stage(record, "teacher", lambda: teacher_targets(model, batches, 64, progress=False))
        prune(model, SparsityPlan.uniform(2, 4, len(find_blocks(model)), criterion="wanda"), calibration, progress=False)
        settings = RecoverSettings(recover_steps=self.args.recover_steps, recover_lr=1e-4)
        losses = self.stage(record, "steps", lambda: recover(model, batches, settings, teacher, progress=False))
        held = all(bool((m.weight[~mask_of(m)] == 0).all()) for _, m in masked_modules(model))
        record.update(losses=losses, masks_held=held, dtype_after=str(next(model.parameters()).dtype))

    def reconstruction(self, record: dict) -> None:
        """Wanda 3:4 with block-wise reconstruction, in memory and offloaded (see the module docstring)."""
        from msp_callback.config import ReconstructSettings
        from msp_callback.models import find_blocks, named_block_linears
        from msp_callback.nm import mask_of, stored_weight
        from msp_callback.plan import SparsityPlan
        from msp_callback.reconstruct import reconstruct

        settings = ReconstructSettings(reconstruct_epochs=self.args.reconstruct_epochs)
        finals = {}
        for form in ("in_memory", "offloaded"):
            with tempfile.TemporaryDirectory() as folder:
                model = self.model(offload_folder=folder if form == "offloaded" else None)
                calibration, holdout, _ = self.data(model.config.vocab_size)
                plan = SparsityPlan.uniform(3, 4, len(find_blocks(model)), criterion="wanda")
                out = record[form] = {}
                reports = self.stage(out, "reconstruct", lambda: reconstruct(
                    model, plan, calibration, settings, holdout=[holdout], progress=False))
                linears = named_block_linears(model)
                out.update(blocks=len(reports), improved=sum(r.train_after < r.train_before for r in reports),
                           train_before=[round(r.train_before, 4) for r in reports],
                           train_after=[round(r.train_after, 4) for r in reports],
                           holdout_after=[None if r.holdout_after is None else round(r.holdout_after, 4) for r in reports],
                           pruned_stay_zero=all(not bool(stored_weight(m)[~mask_of(m)].any()) for m in linears.values()),
                           dtype_after=str(next(iter(linears.values())).weight.dtype))
                finals[form] = {name: (mask_of(m).cpu(), stored_weight(m).detach().float().cpu())
                                for name, m in linears.items()}
                model = linears = None  # the device memory freed before the next form
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        a, b = finals["in_memory"], finals["offloaded"]  # bit-equality is not expected on a GPU (atomics in backward)
        record["same_masks_fraction"] = sum(torch.equal(a[k][0], b[k][0]) for k in a) / len(a)
        record["max_weight_difference"] = max(float((a[k][1] - b[k][1]).abs().max()) for k in a)

    def pipeline(self, record: dict, dtype: torch.dtype, size: str | None = None, offload_folder: str | None = None) -> None:
        """Dense perplexity, uniform Wanda 3:4, then the MSP search and its prune, each stage timed."""
        from msp_callback.allocation import make_plan
        from msp_callback.evaluate import perplexity
        from msp_callback.models import find_blocks, measure_sparsity
        from msp_callback.nm import remove_masks
        from msp_callback.plan import SparsityPlan
        from msp_callback.pruner import prune
        from msp_callback.search.runner import SearchSettings

        stages = record["stages"] = {}
        model = self.stage(stages, "build", lambda: self.model(dtype, size, offload_folder))
        calibration, fitness, windows = self.data(model.config.vocab_size)
        dense_weights = {k: v.clone() for k, v in model.state_dict().items()}

        def ppl(name: str) -> float:
            return self.stage(stages, name, lambda: perplexity(model, windows, progress=False))

        record["dense_ppl"] = ppl("dense perplexity")
        uniform = SparsityPlan.uniform(3, 4, len(find_blocks(model)), criterion="wanda")
        self.stage(stages, "uniform prune", lambda: prune(model, uniform, calibration, progress=False))
        record["uniform_ppl"] = ppl("uniform perplexity")
        remove_masks(model, bake=False)
        model.load_state_dict(dense_weights)
        search = SearchSettings(population=self.args.population, generations=self.args.generations,
                                cache_storage="disk" if offload_folder else "auto")
        plan = self.stage(stages, "msp search", lambda: make_plan(
            "msp", model, 3, 4, "wanda", calibration=calibration, fitness_windows=fitness, search=search,
            seed=self.args.seed, progress=False))
        self.stage(stages, "msp prune", lambda: prune(model, plan, calibration, progress=False))
        record.update(msp_ppl=ppl("msp perplexity"), msp_levels=plan.levels,
                      fitness_evaluations=plan.metadata.get("fitness_evaluations"),
                      measured_sparsity_pct=measure_sparsity(model).pruned_linears,
                      parameters=sum(p.numel() for p in model.parameters()))


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
    p.add_argument("--recover-steps", type=int, default=5)
    p.add_argument("--reconstruct-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=20, help="repeats of the 2:4 timing")
    p.add_argument("--offload-size", default="1b", choices=["", *sorted(SIZES)],
                   help="model for the offloaded-against-in-memory check ('' skips it)")
    p.add_argument("--budget", type=float, default=420, help="seconds after which no new check starts")
    p.add_argument("--out", default=None, help="folder for the JSON (default: benchmarks/results)")
    p.add_argument("--name", default=None, help="default: gpu_check, or gpu_check_cpu on a CPU")
    args = p.parse_args()
    device = torch.device(args.device)
    name = args.name or ("gpu_check_cpu" if device.type == "cpu" else "gpu_check")
    env = environment(device)
    report = Report((Path(args.out) if args.out else RESULTS) / f"{name}.json", {
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]), "arguments": vars(args),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device_name": env["device_name"],
        "environment": env, "note": "random weights and random tokens: speed, memory and plan agreement, not quality"})
    check = Checker(args, device, report)
    for check_name in ("semi_structured_speed", "to_semi_structured", "export_reload", "fisher_traces", "sparsegpt",
                       "kl_fitness", "recovery", "reconstruction"):
        check.run(check_name, getattr(check, check_name))
    report.data["semi_structured_2of4"] = report.data["checks"]["semi_structured_speed"]
    runs = report.data["runs"] = {}
    check.run(args.dtype, lambda r: check.pipeline(r, check.dtype), runs)
    if device.type == "cuda" and args.dtype != "float32":
        check.run("float32", lambda r: check.pipeline(r, torch.float32), runs)
    reference = RESULTS / "gpu_check_cpu.json"
    if device.type == "cuda" and reference.exists() and "msp_levels" in runs.get("float32", {}):
        cpu = json.loads(reference.read_text())["runs"].get("float32", {})
        report.data["float32_plan_equals_cpu"] = cpu.get("msp_levels") == runs["float32"]["msp_levels"]
    if args.offload_size:  # the same model in memory and with its blocks offloaded: same plan, less device memory
        offload = report.data["offload"] = {"size": args.offload_size}
        check.run("in_memory", lambda r: check.pipeline(r, check.dtype, args.offload_size), offload)
        with tempfile.TemporaryDirectory() as folder:
            check.run("offloaded", lambda r: check.pipeline(r, check.dtype, args.offload_size, folder), offload)
        a, b = offload["in_memory"], offload["offloaded"]
        if "msp_levels" in a and "msp_levels" in b:
            offload["same_plan"] = a["msp_levels"] == b["msp_levels"]
    report.data["seconds"] = round(time.perf_counter() - check.started, 1)
    report.save()
    print(json.dumps({k: v for k, v in report.data.items() if k != "arguments"}, indent=2, default=str)[:20000])


if __name__ == "__main__":
    main()
