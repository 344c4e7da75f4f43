#!/usr/bin/env bash
# The embedded default job's study (docs/benchmarks.md, "Default job"): the job with each variant's overrides,
# then STS-B dev / SICK trial (dev, used for the choice) and STS-B / SICK-R test (reported only).
#   scripts/studies/default_job.sh [OUT_DIR] [DATA_DIR]    # about 4 minutes per variant on 2 cores
# DATA_DIR defaults to the data folder beside the checkout (../shared/data from the repository root).
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,5s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
OUT=$(realpath -m "${1:-default-job-study}")
DATA=$(realpath "${2:-$(dirname "$0")/../../../shared/data}")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
evaluate() {
  gte-st eval "$1" --task sts --precision bf16 --data "$DATA/stsb/sts-dev.csv" "$DATA/sick/SICK_trial.txt" \
    "$DATA/stsb/sts-test.csv" "$DATA/sick/SICK_test_annotated.txt" > "$2" 2>&1
  grep spearman "$2"
}
variant() {
  local name=$1; shift
  echo "== $name: gte-st train $*"
  gte-st train --output_dir "$OUT/$name" "$@" > "$OUT/train_$name.log" 2>&1
  grep "docstrings-held-out" "$OUT/train_$name.log"
  evaluate "$OUT/$name" "$OUT/eval_$name.log"
}
echo "== base model"; evaluate "$(python -c 'import gte_st; print(gte_st.default_base_model())')" "$OUT/eval_base.log"
variant default                                             # DEFAULT_JOB: mse, lr 1e-4, WiSE-FT 0.3
variant mse-1e-4-w0.4 --wise_ft 0.4
variant mse-1e-4-w0.5 --wise_ft 0.5
variant gte-1e-4-w0.2 --loss gte --learning_rate 1e-4 --wise_ft 0.2
variant gte-1e-4-w0.3 --loss gte --learning_rate 1e-4 --wise_ft 0.3
variant mse-3e-5-d30 --learning_rate 3e-5 --loss_kwargs '{"distillation_weight": 30}' --wise_ft off  # the job before
variant gte-1e-4 --loss gte --wise_ft off                     # unconstrained
variant mse-1e-4 --wise_ft off                                # no interpolation
variant mse-3e-5 --learning_rate 3e-5 --wise_ft off
variant mse-1e-4-d10 --loss_kwargs '{"distillation_weight": 10}' --wise_ft off
variant mse-3e-5-d10 --learning_rate 3e-5 --loss_kwargs '{"distillation_weight": 10}' --wise_ft off
variant mse-1e-4-d30 --loss_kwargs '{"distillation_weight": 30}' --wise_ft off
variant mse-5e-5-d100 --learning_rate 5e-5 --loss_kwargs '{"distillation_weight": 100}' --wise_ft off
variant mse-1e-4-d100 --loss_kwargs '{"distillation_weight": 100}' --wise_ft off
variant mse-1e-4-d1000 --loss_kwargs '{"distillation_weight": 1000}' --wise_ft off
