#!/usr/bin/env bash
# The README's test command: set up, lint and format-check, then run the whole test suite offline on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The third-party clients of gte-st's models live in environments of their own (see each script for why);
# docs/integrations.md lists them and the tests that run them.
GTE_ST_CONSUMERS_PYTHON="$(bash scripts/setup_consumers_env.sh | tail -n 1)"
GTE_ST_INFINITY_PYTHON="$(bash scripts/setup_infinity_env.sh | tail -n 1)"
export GTE_ST_CONSUMERS_PYTHON GTE_ST_INFINITY_PYTHON
bash scripts/setup_transformers_js.sh >/dev/null
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 CUDA_VISIBLE_DEVICES=""
.venv/bin/ruff check gte_st tests scripts
.venv/bin/ruff format --check gte_st tests scripts
# Two pytest workers (GTE_ST_TEST_WORKERS; 0 runs in this process): most of the suite's time is processes that start
# and import torch / transformers / sentence-transformers (CLI runs, kill-and-rerun cases, the clients), which one
# worker leaves half of a 2-core CI machine idle for. Work stealing, as the tests' lengths differ a hundredfold.
exec .venv/bin/python -m pytest -q -n "${GTE_ST_TEST_WORKERS:-2}" --dist worksteal "$@"
