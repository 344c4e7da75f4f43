#!/usr/bin/env bash
# Two-process data-parallel training on one CPU-only machine (gloo). accelerate's --multi_gpu launcher is torchrun;
# gte-st sets use_cpu when no GPU is present, which makes accelerate use MULTI_CPU with the gloo backend.
set -euo pipefail
exec accelerate launch --multi_gpu --num_processes "${NPROC:-2}" --num_machines 1 --mixed_precision no \
  --dynamo_backend no -m gte_st.training "$@"
