#!/usr/bin/env bash
# Create .venv and install embedeval into it, from nothing. Idempotent: a second run only checks.
#   scripts/setup.sh        runtime (embed, score, report, demo)
#   scripts/setup.sh test   runtime + test tools (pytest, polars, duckdb, faiss, rclone for a local S3,
#                           playwright and Debian's chromium for the report-in-a-browser tests)
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
if [ -n "$extras" ] && ! command -v chromium >/dev/null 2>&1; then
  # The browser tests drive the system's Chromium through playwright (playwright's own browser download is not
  # used). Without root there is no apt-get: they then skip (and fail under CI, which runs this as root).
  sudo=""
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && sudo="sudo -n"; } || sudo="none"
  if [ "$sudo" = none ] || ! command -v apt-get >/dev/null; then
    echo "setup.sh: chromium is missing and cannot be installed (apt-get as root): the browser tests will skip" >&2
  else
    log=$(mktemp)
    { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends chromium; } >"$log" 2>&1 \
      || { tail -n 5 "$log" >&2; echo "setup.sh: apt-get could not install chromium: the browser tests will skip" >&2; }
    rm -f "$log"
  fi
fi
echo "setup.sh: .venv ready ($(.venv/bin/python -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'))"
