"""Two CPU processes (gloo) through Lightning's DDP: one search split across ranks."""

import hashlib
import json

import lightning.pytorch as pl

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


def test_hf_trainer_accelerate_ddp_two_processes(tmp_path):
    """The HF Trainer under torch.distributed.run (Accelerate's DDP, gloo): one search shared by both
    ranks, identical plans, and identical masked weights after more DDP training steps."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                           str(root / "tests" / "hf_ddp_worker.py"), str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["size"] == 2 for r in ranks)
    assert ranks[0]["traces"] == ranks[1]["traces"]
    assert ranks[0]["levels"] == ranks[1]["levels"] and sum(ranks[0]["levels"]) == 6
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["masked_zero"] and ranks[1]["masked_zero"]
    assert ranks[0]["evaluated_here"] + ranks[1]["evaluated_here"] == ranks[0]["evaluations"]
    assert abs(ranks[0]["evaluated_here"] - ranks[1]["evaluated_here"]) <= 2


def test_fsdp2_sharded_model_gives_the_same_plan_and_masks_as_one_process(tmp_path):
    """Each rank holds half of every block (FSDP2 ``fully_shard``, gloo); blocks are gathered for
    their turn and each rank writes its rows of the pruned weights into its shard."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    worker = str(root / "tests" / "fsdp_worker.py")
    for criterion in ("wanda", "sparsegpt"):
        folder = tmp_path / criterion
        folder.mkdir()
        single = subprocess.run([sys.executable, worker, str(folder), criterion], cwd=root, env=env, capture_output=True,
                                text=True, timeout=300)
        assert single.returncode == 0, single.stderr[-3000:]
        sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                                  "29541", worker, str(folder), criterion], cwd=root, env=env, capture_output=True,
                                 text=True, timeout=600)
        assert sharded.returncode == 0, sharded.stderr[-3000:]
        one, *ranks = (torch.load(folder / f"{name}.pt") for name in ("single", "0", "1"))
        for rank in ranks:
            assert rank["levels"] == one["levels"] and rank["best"] == one["best"], criterion
            for name, weight in one["weights"].items():
                assert torch.equal(rank["weights"][name], weight), (criterion, name)  # same weights, same zeros
        assert any(bool((w == 0).any()) for w in one["weights"].values())
