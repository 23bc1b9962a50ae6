#!/usr/bin/env bash
# Set up a venv in .venv with the CPU build of torch pinned first (so nothing pulls a CUDA
# build), then this package with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
python -c "import torch, transformers, lightning, peft, torchmetrics; print('torch', torch.__version__, '| transformers', transformers.__version__)"
