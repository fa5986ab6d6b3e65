#!/usr/bin/env bash
# The quickstart study's teacher and student, one student per `kd_divergence` at equal steps, seed and
# batch order (the alpha 0.4 configuration: T = 2, top-p 0.95 + OTHER), then a table of held-out loss.
#
#   bash quickstart/divergences.sh                 # 600 steps per run; reuses outputs/quickstart's teacher
#   bash quickstart/divergences.sh --steps N --out DIR --toy
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
STEPS=600
OUT=outputs/quickstart
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS="$2"; PASS+=(--steps "$2"); shift ;;
    --out) OUT="$2"; PASS+=(--out "$2"); shift ;;
    --toy) PASS+=(--toy) ;;
    *) echo "unknown argument $1 (expected --steps N, --out DIR, --toy)" >&2; exit 2 ;;
  esac
  shift
done
# the tokenizer, the teacher and the forward-KL student of run_all.sh (finished runs are reused)
bash quickstart/run_all.sh "${PASS[@]}" --students alpha_04
EXTRA=()
if [[ " ${PASS[*]} " == *" --toy "* ]]; then
  PLAY="$("$PY" -c 'from MaxText.data.input_pipeline import shakespeare_files; print(shakespeare_files()[0])')"
  EXTRA=(max_target_length=32 per_device_batch_size=2 eval_steps=1 log_period=1 checkpoint_period=1000 remat_policy=none
         async_checkpointing=false "dataset_path=$PLAY")
fi
RUNS=("$OUT/alpha_04")  # forward KL: the alpha sweep's alpha 0.4 student
for divergence in reverse_kl jsd tvd skew_forward_kl skew_reverse_kl; do
  name="div_$divergence"
  RUNS+=("$OUT/$name")
  [ -d "$OUT/$name/checkpoints/$STEPS" ] && continue
  echo "== $name"
  "$PY" MaxText/train.py configs/alpha_04.yml "run_name=$name" "steps=$STEPS" "base_output_directory=$OUT" \
    "tokenizer_path=$OUT/tokenizer/tokenizer.json" "eval_interval=$(( STEPS < 100 ? STEPS : 100 ))" \
    "checkpoint_period=100" "kd_teacher_parameters_path=$OUT/quickstart_teacher/checkpoints/$STEPS" \
    "kd_divergence=$divergence" "${EXTRA[@]}"
done
"$PY" quickstart/plot_results.py --runs "${RUNS[@]}" --teacher "$OUT/quickstart_teacher" \
  --figure "$OUT/divergences.png" --table "$OUT/divergences.md"
cat "$OUT/divergences.md"
