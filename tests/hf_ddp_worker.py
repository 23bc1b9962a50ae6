"""One rank of the 2-process HF Trainer (Accelerate DDP, gloo) test; run by test_distributed.py
through torch.distributed.run. Prunes at train start, trains on, and writes what this rank ended with."""

import hashlib
import json
import sys

import torch
from transformers import Trainer, TrainingArguments

from msp_callback import MSPTrainerCallback
from msp_callback.distributed import world
from msp_callback.models import block_linears, find_blocks
from msp_callback.nm import mask_of
from tests.conftest import VOCAB, tiny_model

out = sys.argv[1]

torch.set_num_threads(1)
model = tiny_model("llama")
ids = torch.randint(0, VOCAB, (32, 16), generator=torch.Generator().manual_seed(0))
dataset = [{"input_ids": row, "labels": row} for row in ids]
cb = MSPTrainerCallback(sparsity="2:4", allocation="msp", when="fit_start", init="trace", calib_samples=4,
                        fitness_samples=4, population=6, generations=2, progress=False)
args = TrainingArguments(output_dir=out, max_steps=3, per_device_train_batch_size=4, report_to=[], save_strategy="no",
                         use_cpu=True, disable_tqdm=True, learning_rate=1e-2, ddp_backend="gloo")
trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[cb])
trainer.train()
synced_masks = [n for n in getattr(trainer.model_wrapped, "named_module_buffers", {}) if n.endswith(".mask")]

digest, masked_zero = hashlib.sha256(), True
for block, level in zip(find_blocks(model), cb.plan.levels):
    for module in block_linears(block).values():
        weight = module.weight.detach()
        digest.update(weight.numpy().tobytes())
        masked_zero &= bool((weight[~mask_of(module)] == 0).all())
rank, size = world()
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"size": size, "levels": cb.plan.levels, "traces": cb.plan.metadata["traces"],
               "evaluated_here": cb.plan.metadata["fitness_evaluations_this_rank"],
               "evaluations": cb.plan.metadata["fitness_evaluations"], "weights": digest.hexdigest(),
               "masked_zero": masked_zero, "ddp": type(trainer.model_wrapped).__name__, "synced_masks": synced_masks}, f)
