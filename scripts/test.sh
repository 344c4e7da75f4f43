#!/usr/bin/env bash
# The README's test command: set up, lint, then run the whole test suite offline on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 CUDA_VISIBLE_DEVICES=""
.venv/bin/ruff check gte_st tests scripts
exec .venv/bin/python -m pytest -q "$@"
