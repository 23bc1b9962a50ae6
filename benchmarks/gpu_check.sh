#!/usr/bin/env bash
# The GPU check as one command (on a lent device: `bash benchmarks/gpu_check.sh`, results in $OUT
# or benchmarks/results). Needs only the repository and the machine's torch + transformers: random
# weights, random tokens (see benchmarks/gpu_check.py). The JSON is rewritten after every check; no
# check starts after 7 minutes (--budget 420) and the whole run stops at 8 minutes whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
timeout 480 python3 benchmarks/gpu_check.py --out "${OUT:-benchmarks/results}" "$@"
