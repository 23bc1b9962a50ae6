"""One rank of the multi-GPU check (run by benchmarks/multi_gpu_check.sh under torchrun).

    torchrun --nproc_per_node 2 benchmarks/multi_gpu_worker.py MODE OUT [--cpu]

MODE: ``lightning`` (MSPCallback under Lightning's DDP), ``hf`` (MSPTrainerCallback under the HF
Trainer's DDP) or ``fsdp2`` (``make_plan`` + ``prune`` on a model sharded with ``fully_shard``).
NCCL on one GPU per rank (``--cpu``: gloo on the CPU, to try the script without GPUs). A random
Llama-shaped model (SmolLM2-135M's shape, or ``--size tiny``) and random tokens: nothing to
download. The callbacks prune at the end of fit (``init="trace"``: Fisher traces reduced across
ranks; two recovery steps: rank 0's weights broadcast after), so every collective the library
makes runs. Each rank writes OUT/MODE-rank<R>.json: the plan, a digest of the pruned weights,
the device and dtype of every tensor the library's collectives received, whether DDP still
wrapped the model when pruning started, the mask buffers DDP syncs, seconds and peak memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent.parent))

from benchmarks.gpu_check import SIZES  # noqa: E402
from msp_callback.models import find_blocks, named_block_linears  # noqa: E402

CALLS: list[list] = []
ACTIVE = [False]


def record_collectives() -> None:
    """Wrap torch.distributed's collectives: while ACTIVE, note where each one's tensors are."""
    def tensors(obj) -> list:
        if isinstance(obj, torch.Tensor):
            return [obj]
        if isinstance(obj, dict):
            obj = list(obj.values())
        if isinstance(obj, (list, tuple)):
            return [t for item in obj for t in tensors(item)]
        return [t for value in getattr(obj, "__dict__", {}).values() for t in tensors(value)]

    for name in ("broadcast", "all_reduce", "all_gather", "broadcast_object_list", "all_gather_object"):
        def wrapped(*args, _name=name, _original=getattr(dist, name), **kwargs):
            if ACTIVE[0]:
                sent = args[1] if _name in ("all_gather", "all_gather_object") else args[0]
                CALLS.append([_name, sorted({f"{t.device}:{t.dtype}" for t in tensors(sent)}),
                              str(kwargs.get("device")) if "device" in kwargs else None])
            return _original(*args, **kwargs)
        setattr(dist, name, wrapped)


def model_and_rows(size: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SIZES[size], max_position_embeddings=1024,
                                                         tie_word_embeddings=True))
    rows = torch.randint(0, model.config.vocab_size, (64, 128), generator=torch.Generator().manual_seed(1))
    return model, rows


def digest(model) -> str:
    h = hashlib.sha256()
    for module in named_block_linears(model).values():
        weight = module.weight.detach()
        weight = weight.full_tensor() if hasattr(weight, "full_tensor") else weight
        h.update(weight.float().cpu().numpy().tobytes())
    return h.hexdigest()


def watch(engine, out: dict, more=lambda: {}) -> None:
    """Make ``engine.compress`` note where the model is (and ``more()``) and record its collectives."""
    compress = engine.compress

    def compressing(model, *args, **kwargs):
        out.update(device_at_prune=str(next(model.parameters()).device), **more())
        ACTIVE[0] = True
        try:
            return compress(model, *args, **kwargs)
        finally:
            ACTIVE[0] = False
    engine.compress = compressing


SETTINGS = dict(sparsity="2:4", allocation="msp", init="trace", calib_samples=8, fitness_samples=4, population=8,
                generations=2, recover_steps=2, recover_batch_size=2, progress=False)


def lightning(size: str, cpu: bool, out: dict) -> torch.nn.Module:
    import lightning.pytorch as pl
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    from msp_callback import MSPCallback

    model, rows = model_and_rows(size)

    class LM(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch[0], labels=batch[0]).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            out["ddp_synced_masks"] = [n for n in trainer.strategy.model.named_module_buffers if n.endswith(".mask")]

    msp = MSPCallback(**SETTINGS)
    watch(msp.engine, out, lambda: {"wrapped_at_prune": isinstance(trainer.strategy.model, DistributedDataParallel)})
    trainer = pl.Trainer(max_steps=3, accelerator="cpu" if cpu else "gpu", devices=int(os.environ["WORLD_SIZE"]),
                         strategy="ddp", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[msp, Probe()])
    trainer.fit(LM(), DataLoader(TensorDataset(rows), batch_size=4))
    out["levels"] = msp.plan.levels
    return model


def hf(size: str, cpu: bool, out: dict, folder: str) -> torch.nn.Module:
    from transformers import Trainer, TrainingArguments

    from msp_callback import MSPTrainerCallback

    model, rows = model_and_rows(size)
    callback = MSPTrainerCallback(**SETTINGS)
    watch(callback.engine, out)
    args = TrainingArguments(output_dir=folder, max_steps=3, per_device_train_batch_size=4, report_to=[],
                             save_strategy="no", use_cpu=cpu, disable_tqdm=True, learning_rate=1e-4,
                             ddp_backend="gloo" if cpu else "nccl", bf16=not cpu)
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in rows],
                      callbacks=[callback])
    trainer.train()
    out["ddp_synced_masks"] = [n for n in getattr(trainer.model_wrapped, "named_module_buffers", {}) if n.endswith(".mask")]
    out["levels"] = callback.plan.levels
    return model


def fsdp2(size: str, cpu: bool, out: dict) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from msp_callback.allocation import make_plan
    from msp_callback.pruner import prune
    from msp_callback.search.runner import SearchSettings

    dist.init_process_group("gloo" if cpu else "nccl")
    model, rows = model_and_rows(size)
    if not cpu:
        model.to(torch.device("cuda", torch.cuda.current_device()))
    mesh = init_device_mesh("cpu" if cpu else "cuda", (dist.get_world_size(),))
    for block in find_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    calibration, fitness = list(rows[:8].split(4)), rows[8:12]
    ACTIVE[0] = True
    try:
        plan = make_plan("msp", model, 2, 4, "sparsegpt", calibration=calibration, fitness_windows=fitness,
                         search=SearchSettings(population=8, generations=2), progress=False)
        prune(model, plan, calibration, progress=False)
    finally:
        ACTIVE[0] = False
    out["levels"] = plan.levels
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["lightning", "hf", "fsdp2"])
    p.add_argument("out")
    p.add_argument("--size", default="135m", choices=sorted(SIZES))
    p.add_argument("--cpu", action="store_true", help="gloo on the CPU (try the script without GPUs)")
    args = p.parse_args()
    rank = int(os.environ.get("RANK", 0))
    if not args.cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.reset_peak_memory_stats()
    record_collectives()
    out: dict = {"mode": args.mode, "rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", 1))}
    start = time.perf_counter()
    try:
        if args.mode == "lightning":
            model = lightning(args.size, args.cpu, out)
        elif args.mode == "hf":
            model = hf(args.size, args.cpu, out, f"{args.out}/hf-trainer")
        else:
            model = fsdp2(args.size, args.cpu, out)
        out["weights"] = digest(model)
    except Exception as error:
        out["error"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        out.update(seconds=round(time.perf_counter() - start, 1), collectives=CALLS,
                   peak_mib=None if args.cpu else round(torch.cuda.max_memory_allocated() / 2**20, 1))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}/{args.mode}-rank{rank}.json").write_text(json.dumps(out, indent=2))
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
