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
variant default                                             # DEFAULT_JOB: mse, lr 3e-5, distillation 30
variant gte-1e-4 --loss gte --learning_rate 1e-4            # the previous default job
variant mse-1e-4 --learning_rate 1e-4 --loss_kwargs '{}'
variant mse-3e-5 --loss_kwargs '{}'
variant mse-1e-4-d10 --learning_rate 1e-4 --loss_kwargs '{"distillation_weight": 10}'
variant mse-3e-5-d10 --loss_kwargs '{"distillation_weight": 10}'
variant mse-1e-4-d30 --learning_rate 1e-4
variant mse-5e-5-d100 --learning_rate 5e-5 --loss_kwargs '{"distillation_weight": 100}'
variant mse-1e-4-d100 --learning_rate 1e-4 --loss_kwargs '{"distillation_weight": 100}'
variant mse-1e-4-d1000 --learning_rate 1e-4 --loss_kwargs '{"distillation_weight": 1000}'
