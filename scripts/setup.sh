#!/usr/bin/env bash
# Create .venv and install embedeval into it, from nothing. Idempotent: a second run only checks.
#   scripts/setup.sh        runtime (embed, score, report, demo)
#   scripts/setup.sh test   runtime + test tools (pytest, polars, duckdb, faiss, rclone for a local S3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# torch/torchvision are pinned to the builds this project is tested with (the CPU machines have them on disk).
TORCH_PINS=${TORCH_PINS:-"torch==2.14.1 torchvision==0.29.1"}
.venv/bin/python -m pip install --quiet $TORCH_PINS 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install --quiet -e ".${extras}" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import embedeval, torch, torchvision, ray, open_clip" \
  || { echo "setup.sh: installation incomplete (see pip output above)" >&2; exit 1; }
echo "setup.sh: .venv ready ($(.venv/bin/python -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'))"
