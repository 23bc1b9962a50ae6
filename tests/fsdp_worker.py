"""The library's search and prune on a tiny model: in one process, or on one rank of an FSDP2
(``fully_shard``) model under torch.distributed.run with gloo; run by test_distributed.py. Writes
the plan, the best fitness and the gathered pruned weights of this process, and the most blocks
held unsharded after any fitness evaluation of the search. ``forward-first`` runs an ordinary
forward (a dense perplexity) before the search, so FSDP's root initialises with the real blocks."""

import os
import sys

import torch
import torch.distributed as dist

from msp_callback.allocation import make_plan
from msp_callback.evaluate import perplexity
from msp_callback.models import find_blocks, named_block_linears
from msp_callback.pruner import prune
from msp_callback.search.fitness import CachedFitness
from msp_callback.search.runner import SearchSettings
from tests.conftest import tiny_model, token_batches

out, criterion = sys.argv[1], sys.argv[2]
order = sys.argv[3] if len(sys.argv) > 3 else "search-first"
torch.set_num_threads(1)
model = tiny_model("llama")
rank = "single"
if "RANK" in os.environ:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for block in find_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    rank = str(dist.get_rank())
    assert hasattr(find_blocks(model)[0].mlp.down_proj.weight, "full_tensor")  # really sharded
calib, fitness = token_batches(2, 16), torch.cat(token_batches(2, 16, seed=1))
if order == "forward-first":
    perplexity(model, fitness, progress=False)
unsharded = []
run_blocks = CachedFitness._run_blocks


def counting(self, first_changed):
    run_blocks(self, first_changed)
    unsharded.append(sum(not hasattr(b.mlp.down_proj.weight, "full_tensor") for b in find_blocks(model)))


CachedFitness._run_blocks = counting
plan = make_plan("msp", model, 2, 4, criterion, calibration=calib, fitness_windows=fitness,
                 search=SearchSettings(population=6, generations=2), progress=False)
prune(model, plan, calib, progress=False)
weights = {name: getattr(module.weight, "full_tensor", lambda w=module.weight: w)().detach().clone()
           for name, module in named_block_linears(model).items()}
torch.save({"levels": plan.levels, "best": plan.metadata["best_fitness"], "weights": weights,
            "most_unsharded_blocks": max(unsharded)}, f"{out}/{rank}-{order}.pt")
if dist.is_initialized():
    dist.destroy_process_group()
