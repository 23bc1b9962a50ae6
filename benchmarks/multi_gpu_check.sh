#!/usr/bin/env bash
# The multi-GPU check, for a machine with 2 or more GPUs (run it whenever one is available):
#   bash benchmarks/multi_gpu_check.sh [NPROC]       # results in $OUT or benchmarks/results/multi_gpu
# Runs benchmarks/multi_gpu_worker.py under torchrun with NCCL, one GPU per rank, in three modes:
# MSPCallback under Lightning's DDP, MSPTrainerCallback under the HF Trainer's DDP, and make_plan +
# prune on an FSDP2 (fully_shard) model; then checks that the ranks agree (plan, pruned weights),
# that the callbacks pruned while DDP still wrapped the model on its GPU, that every collective
# got CUDA tensors, and that DDP does not sync the mask buffers. Needs only the repository and the
# machine's torch, transformers and lightning (random weights, random tokens).
# MULTI_GPU_CPU=1 runs the same on the CPU with gloo (to try the script without GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
NPROC="${1:-2}"
OUTDIR="${OUT:-benchmarks/results}/multi_gpu"
EXTRA=()
if [[ "${MULTI_GPU_CPU:-0}" == 1 ]]; then EXTRA=(--cpu --size tiny); fi
mkdir -p "$OUTDIR"
port=29611
for mode in lightning hf fsdp2; do
    timeout 600 python3 -m torch.distributed.run --nproc_per_node "$NPROC" --master_port "$port" \
        benchmarks/multi_gpu_worker.py "$mode" "$OUTDIR" "${EXTRA[@]}" > "$OUTDIR/$mode.log" 2>&1 \
        || echo "$mode: failed (see $OUTDIR/$mode.log)"
    port=$((port + 1))
done
python3 - "$OUTDIR" "$NPROC" "${MULTI_GPU_CPU:-0}" <<'PY'
import json, sys
from pathlib import Path
out, nproc, cpu = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
summary = {}
for mode in ("lightning", "hf", "fsdp2"):
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob(f"{mode}-rank*.json"))]
    if len(ranks) != nproc or any("error" in r for r in ranks):
        summary[mode] = {"ok": False, "errors": [r.get("error") for r in ranks], "ranks_reported": len(ranks)}
        continue
    device = "cpu" if cpu else "cuda"
    tensors = [kind for r in ranks for _, kinds, _ in r["collectives"] for kind in kinds]
    checks = {"same_plan": len({json.dumps(r["levels"]) for r in ranks}) == 1,
              "same_weights": len({r["weights"] for r in ranks}) == 1,
              "collective_tensors_on_backend_device": all(k.startswith(device) for k in tensors) if not cpu else True,
              "collectives": sorted({name for r in ranks for name, _, _ in r["collectives"]})}
    if mode != "fsdp2":
        checks["pruned_on_device"] = all(r["device_at_prune"].startswith(device) for r in ranks)
        checks["ddp_syncs_no_masks"] = all(not r["ddp_synced_masks"] for r in ranks)
    if mode == "lightning":
        checks["ddp_wrapped_at_prune"] = all(r["wrapped_at_prune"] for r in ranks)
    checks.update(seconds=max(r["seconds"] for r in ranks), peak_mib=[r["peak_mib"] for r in ranks])
    checks["ok"] = all(v for k, v in checks.items() if isinstance(v, bool))
    summary[mode] = checks
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY
