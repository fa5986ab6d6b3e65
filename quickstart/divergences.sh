#!/usr/bin/env bash
# The quickstart study's teacher and student, one student per soft term at equal steps, seed and batch
# order, then a table of held-out loss. Every run but mse is the alpha 0.4 configuration (T = 2, top-p
# 0.95 + OTHER) with one change: its kd_divergence, or a feature term added (hidden states, attention
# relations); mse compares logits, so it runs at T = 1 without pruning. CE only and forward KL are the
# first two rows.
#
#   bash quickstart/divergences.sh                 # 600 steps per run; reuses outputs/quickstart's teacher
#   bash quickstart/divergences.sh --runs "div_mse feat_residual"   # only these rows (and the first two)
#   bash quickstart/divergences.sh --steps N --out DIR --toy
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
STEPS=600
OUT=outputs/quickstart
PASS=()
declare -A KEYS=(
  [div_reverse_kl]="kd_divergence=reverse_kl"
  [div_jsd]="kd_divergence=jsd"
  [div_tvd]="kd_divergence=tvd"
  [div_skew_forward_kl]="kd_divergence=skew_forward_kl"
  [div_skew_reverse_kl]="kd_divergence=skew_reverse_kl"
  [div_mse]="kd_divergence=mse kd_temperature=1.0 kd_top_p=0.0 kd_use_other_bucket=false"
  # the residual stream after the embedding and each student layer vs the teacher's at the same relative depth
  [feat_residual]="kd_beta=1.0 kd_feature_source=residual kd_layer_indices=embedding,0,1"
  # MiniLM-v2: q-q, k-k, v-v relations of the student's last layer vs the teacher's last layer
  [feat_relations]="kd_beta=1.0 kd_feature_source=attention_relations kd_layer_indices=1"
)
CHOSEN=(div_reverse_kl div_jsd div_tvd div_skew_forward_kl div_skew_reverse_kl div_mse feat_residual feat_relations)
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS="$2"; PASS+=(--steps "$2"); shift ;;
    --out) OUT="$2"; PASS+=(--out "$2"); shift ;;
    --toy) PASS+=(--toy) ;;
    --runs) read -r -a CHOSEN <<< "$2"; shift ;;
    *) echo "unknown argument $1 (expected --steps N, --out DIR, --toy, --runs LIST)" >&2; exit 2 ;;
  esac
  shift
done
for name in "${CHOSEN[@]}"; do
  [ -n "${KEYS[$name]+x}" ] || { echo "unknown run $name (expected one of: ${!KEYS[*]})" >&2; exit 2; }
done
# the tokenizer, the teacher, the CE-only and the forward-KL students of run_all.sh (finished runs are reused)
bash quickstart/run_all.sh "${PASS[@]}" --students "ce_only alpha_04"
EXTRA=()
if [[ " ${PASS[*]} " == *" --toy "* ]]; then
  PLAY="$("$PY" -c 'from MaxText.data.input_pipeline import shakespeare_files; print(shakespeare_files()[0])')"
  EXTRA=(max_target_length=32 per_device_batch_size=2 eval_steps=1 log_period=1 checkpoint_period=1000 remat_policy=none
         async_checkpointing=false "dataset_path=$PLAY")
fi
RUNS=("$OUT/ce_only" "$OUT/alpha_04")  # CE only; forward KL (the alpha sweep's alpha 0.4 student)
for name in "${CHOSEN[@]}"; do
  RUNS+=("$OUT/$name")
  [ -d "$OUT/$name/checkpoints/$STEPS" ] && continue
  echo "== $name: ${KEYS[$name]}"
  read -r -a keys <<< "${KEYS[$name]}"
  "$PY" MaxText/train.py configs/alpha_04.yml "run_name=$name" "steps=$STEPS" "base_output_directory=$OUT" \
    "tokenizer_path=$OUT/tokenizer/tokenizer.json" "eval_interval=$(( STEPS < 100 ? STEPS : 100 ))" \
    "checkpoint_period=100" "kd_teacher_parameters_path=$OUT/quickstart_teacher/checkpoints/$STEPS" \
    "${keys[@]}" "${EXTRA[@]}"
done
"$PY" quickstart/plot_results.py --runs "${RUNS[@]}" --teacher "$OUT/quickstart_teacher" \
  --figure "$OUT/divergences.png" --table "$OUT/divergences.md"
cat "$OUT/divergences.md"
