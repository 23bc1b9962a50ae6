"""Several processes: DDP through Lightning and the HF Trainer, FSDP2, and the device every collective
takes (two CPU processes with gloo; an NCCL-like backend simulated with FakeTensorMode)."""

import hashlib
import json

import lightning.pytorch as pl
import pytest

from msp_callback import MSPCallback
from msp_callback.distributed import world
from msp_callback.models import block_linears, find_blocks

from .test_callbacks import LitLM, loader


class Record(pl.Callback):
    """Writes what each rank ended with (runs after MSPCallback, which is listed first)."""

    def __init__(self, folder, msp):
        self.folder, self.msp = str(folder), msp

    def on_fit_end(self, trainer, pl_module):
        plan = self.msp.plan
        digest = hashlib.sha256()
        for block in find_blocks(pl_module.model):
            for module in block_linears(block).values():
                digest.update(module.weight.detach().numpy().tobytes())
        rank, size = world()
        with open(f"{self.folder}/rank{rank}.json", "w") as f:
            json.dump({"size": size, "levels": plan.levels, "traces": plan.metadata["traces"],
                       "evaluated_here": plan.metadata["fitness_evaluations_this_rank"],
                       "evaluations": plan.metadata["fitness_evaluations"], "weights": digest.hexdigest()}, f)


def test_ddp_two_processes_share_one_search(tmp_path):
    """Pruned at fit start, then trained under DDP: the replicas must stay identical and sparse."""
    msp = MSPCallback(sparsity="2:4", allocation="msp", init="trace", calib_samples=4, fitness_samples=4,
                      population=6, generations=2, progress=False, when="fit_start")
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[msp, Record(tmp_path, msp)])
    trainer.fit(LitLM(), loader(rows=32))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["size"] == 2 for r in ranks)
    assert ranks[0]["traces"] == ranks[1]["traces"]
    assert ranks[0]["levels"] == ranks[1]["levels"] and sum(ranks[0]["levels"]) == 6
    assert ranks[0]["weights"] == ranks[1]["weights"]  # identical masked weights
    total = ranks[0]["evaluations"]
    assert ranks[0]["evaluated_here"] + ranks[1]["evaluated_here"] == total
    assert abs(ranks[0]["evaluated_here"] - ranks[1]["evaluated_here"]) <= 2  # about half each


def free_port() -> str:
    """A port no other process listens on now (a fixed one collides with a concurrent test run)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _tensors_in(obj) -> list:
    """The tensors inside a (pickled) object: nested lists, tuples and dicts."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors_in(item)]
    return [t for value in getattr(obj, "__dict__", {}).values() for t in _tensors_in(value)]


class Probe(pl.Callback):
    """On each rank: records the device and dtype of every tensor the pruning's torch.distributed
    collectives receive (for object collectives, of the tensors inside the objects) and whether the
    model is still DDP-wrapped when pruning starts; on rank 1 it perturbs the recovered weights as a
    GPU's non-deterministic backward kernels would. Writes that and the final weights' digest."""

    def __init__(self, folder, msp):
        self.folder, self.msp = str(folder), msp

    def setup(self, trainer, pl_module, stage):
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        from msp_callback.integrations import engine

        self.calls, self.wrapped, active = [], None, [False]
        for name in ("broadcast", "all_reduce", "all_gather", "broadcast_object_list", "all_gather_object"):
            def record(*args, _name=name, _original=getattr(dist, name), **kwargs):
                if active[0]:
                    sent = args[1] if _name in ("all_gather", "all_gather_object") else args[0]
                    self.calls.append([_name, sorted({f"{t.device.type}:{t.dtype}" for t in _tensors_in(sent)})])
                return _original(*args, **kwargs)
            setattr(dist, name, record)
        compress = self.msp.engine.compress

        def compressing(*args, **kwargs):
            self.wrapped = isinstance(trainer.strategy.model, DistributedDataParallel)
            active[0] = True
            try:
                return compress(*args, **kwargs)
            finally:
                active[0] = False
        self.msp.engine.compress = compressing
        if trainer.global_rank == 1:
            recover = engine.recover

            def drifting(model, *args, **kwargs):
                losses = recover(model, *args, **kwargs)
                with torch.no_grad():
                    for parameter in find_blocks(model).parameters():
                        parameter.add_(1e-3)
                return losses
            engine.recover = drifting

    def on_train_start(self, trainer, pl_module):
        self.synced_masks = [name for name in trainer.strategy.model.named_module_buffers if name.endswith(".mask")]

    def on_fit_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for block in find_blocks(pl_module.model):
            for module in block_linears(block).values():
                digest.update(module.weight.detach().numpy().tobytes())
        with open(f"{self.folder}/rank{world()[0]}.json", "w") as f:
            json.dump({"levels": self.msp.plan.levels, "wrapped": self.wrapped, "calls": self.calls,
                       "synced_masks": self.synced_masks,
                       "recovery_steps": self.msp.plan.metadata["recovery"]["steps"], "weights": digest.hexdigest()}, f)


def test_ddp_fit_end_prunes_the_wrapped_model_and_keeps_rank_0s_recovered_weights(tmp_path):
    """Pruning at the end of fit runs before Lightning unwraps DDP (and moves the model to the CPU);
    every collective gets its tensors on the backend's device (the CPU under gloo; object
    broadcasts carry CPU rows); recovery ends with rank 0's weights on both ranks even when the
    ranks' training drifted apart; DDP leaves the masks out of its per-step buffer broadcast."""
    msp = MSPCallback(sparsity="2:4", allocation="msp", init="trace", calib_samples=4, fitness_samples=4,
                      population=4, generations=1, recover_steps=2, recover_batch_size=2, progress=False)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[msp, Probe(tmp_path, msp)])
    trainer.fit(LitLM(), loader(rows=32))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["wrapped"] for r in ranks] == [True, True]
    assert [r["synced_masks"] for r in ranks] == [[], []]  # DDP does not broadcast mask buffers every step
    assert ranks[0]["levels"] == ranks[1]["levels"] and ranks[0]["recovery_steps"] == 2
    assert ranks[0]["weights"] == ranks[1]["weights"]
    for rank in ranks:
        names = {name for name, _ in rank["calls"]}
        assert names == {"broadcast", "all_reduce", "all_gather", "broadcast_object_list"}, names
        assert all(kind.startswith("cpu:") for _, kinds in rank["calls"] for kind in kinds), rank["calls"]


def test_hf_trainer_accelerate_ddp_two_processes(tmp_path):
    """The HF Trainer under torch.distributed.run (Accelerate's DDP, gloo): one search shared by both
    ranks, identical plans, and identical masked weights after more DDP training steps."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                           str(root / "tests" / "hf_ddp_worker.py"), str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["size"] == 2 for r in ranks)
    assert ranks[0]["traces"] == ranks[1]["traces"]
    assert ranks[0]["levels"] == ranks[1]["levels"] and sum(ranks[0]["levels"]) == 6
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["masked_zero"] and ranks[1]["masked_zero"]
    assert [(r["ddp"], r["synced_masks"]) for r in ranks] == [("DistributedDataParallel", [])] * 2
    assert ranks[0]["evaluated_here"] + ranks[1]["evaluated_here"] == ranks[0]["evaluations"]
    assert abs(ranks[0]["evaluated_here"] - ranks[1]["evaluated_here"]) <= 2


def test_fsdp2_sharded_model_gives_the_same_plan_and_masks_as_one_process(tmp_path):
    """Each rank holds half of every block (FSDP2 ``fully_shard``, gloo); blocks are gathered for
    their turn and each rank writes its rows of the pruned weights into its shard. Whichever runs
    first, the library's block walk (FSDP's root then initialises with stand-ins for the blocks,
    which become roots that never reshard) or an ordinary forward (blocks reshard after every
    forward, also mid-walk), no rank holds a gathered block after a fitness evaluation."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    worker = str(root / "tests" / "fsdp_worker.py")
    for criterion, order in (("wanda", "search-first"), ("sparsegpt", "search-first"), ("wanda", "forward-first")):
        folder = tmp_path / criterion
        folder.mkdir(exist_ok=True)
        if not (folder / f"single-{order}.pt").exists():
            single = subprocess.run([sys.executable, worker, str(folder), criterion, order], cwd=root, env=env,
                                    capture_output=True, text=True, timeout=300)
            assert single.returncode == 0, single.stderr[-3000:]
        sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                                  free_port(), worker, str(folder), criterion, order], cwd=root, env=env, capture_output=True,
                                 text=True, timeout=600)
        assert sharded.returncode == 0, sharded.stderr[-3000:]
        one, *ranks = (torch.load(folder / f"{name}-{order}.pt") for name in ("single", "0", "1"))
        for rank in ranks:
            assert rank["levels"] == one["levels"] and rank["best"] == one["best"], (criterion, order)
            assert rank["most_unsharded_blocks"] == 0, (criterion, order)
            for name, weight in one["weights"].items():
                assert torch.equal(rank["weights"][name], weight), (criterion, order, name)  # same weights, same zeros
        assert any(bool((w == 0).any()) for w in one["weights"].values())

class _Sent(Exception):
    """Raised by a recording collective once it has seen its input (nothing is read back)."""


def _nccl_like_world(monkeypatch) -> list:
    """Two ranks whose backend takes CUDA tensors only (NCCL's rule) with this rank on cuda:1, on
    this CPU: each collective records the device and dtype it receives, then stops the caller.
    Run the caller under FakeTensorMode, where CUDA tensors can exist without a GPU."""
    import torch
    import torch.distributed as dist

    from msp_callback import distributed

    calls = []
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)

    def recorder(name):
        def record(first, *args, **kwargs):
            tensor = first[0] if name == "all_gather" else first
            if name == "broadcast_object_list":
                calls.append((name, str(kwargs.get("device"))))
            elif name == "all_gather_object":
                calls.append((name, None))
            else:
                calls.append((name, str(tensor.device), tensor.dtype))
            raise _Sent
        return record

    for name in ("all_reduce", "broadcast", "all_gather", "broadcast_object_list", "all_gather_object"):
        monkeypatch.setattr(dist, name, recorder(name))
    return calls


def test_collectives_send_tensors_on_the_device_the_backend_takes(monkeypatch):
    """NCCL groups (Lightning's and Accelerate's on GPUs) take CUDA tensors only: Fisher traces,
    fitness scores, masks and pickled objects must travel on the rank's GPU, not the CPU."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from msp_callback.distributed import ShardedEvaluate, broadcast, broadcast_masks, collective_device, reduce_traces
    from msp_callback.plan import SparsityPlan
    from msp_callback.pruner import prune

    from .conftest import tiny_model

    model = tiny_model("llama")
    prune(model, SparsityPlan.uniform(2, 4, 3, criterion="magnitude"), progress=False)
    calls = _nccl_like_world(monkeypatch)
    assert collective_device() == torch.device("cuda", 1)
    assert collective_device(torch.device("cuda", 3)) == torch.device("cuda", 3)  # the model's GPU wins
    with FakeTensorMode(allow_non_fake_inputs=True):
        for run in (lambda: reduce_traces([1.0, 2.0, 3.0], 4), lambda: ShardedEvaluate(lambda xs: [0.5] * len(xs))([[1], [2], [3]]),
                    lambda: broadcast_masks(model), lambda: broadcast({"levels": [1, 2]})):
            with pytest.raises(_Sent):
                run()
    assert calls == [("all_reduce", "cuda:1", torch.float64), ("all_gather", "cuda:1", torch.float64),
                     ("broadcast", "cuda:1", torch.uint8), ("broadcast_object_list", "cuda:1")]


def test_collectives_stay_on_the_cpu_where_the_backend_serves_it(monkeypatch):
    import torch
    import torch.distributed as dist

    from msp_callback.distributed import collective_device

    for backend in ("gloo", "cpu:gloo,cuda:nccl"):
        monkeypatch.setattr(dist, "get_backend", lambda group=None, b=backend: b)
        assert collective_device(torch.device("cuda", 0)) == torch.device("cpu")


def test_calibration_rows_are_on_the_cpu_before_they_are_pickled_to_the_other_ranks():
    """Accelerate's dataloader yields rows already on the GPU; pickled there, they would unpickle
    on rank 0's cuda:0 on every rank. (A CUDA batch is simulated with FakeTensorMode.)"""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from msp_callback.integrations.engine import take_rows

    with FakeTensorMode(allow_non_fake_inputs=True):
        ids = torch.zeros(3, 8, dtype=torch.long, device="cuda:0")
        rows = take_rows([{"input_ids": ids}, (ids,)], 4)
    assert [(r.device.type, r.shape[0]) for r in rows] == [("cpu", 3), ("cpu", 1)]
