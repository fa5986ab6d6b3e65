#!/usr/bin/env bash
# The quickstart distillation study: one teacher, then students of one smaller architecture trained on
# the same data, steps, seed and batch order with CE only (alpha 0), KD alpha 0.2 ... 1.0, and hard
# labels (alpha 1); then a figure and a results table.
#
#   bash quickstart/run_all.sh            # default: 600 steps per run (about 20 minutes on a 2-core CPU)
#   bash quickstart/run_all.sh --full     # 2000 steps per run
#   bash quickstart/run_all.sh --steps N --out DIR --toy   # tiny smoke run (used by the tests)
#   bash quickstart/run_all.sh --students "ce_only alpha_04"   # the teacher and only these students
#
# Re-running picks up where it stopped: the tokenizer and finished runs are reused, and an interrupted
# run resumes from its newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
STEPS=600
OUT=outputs/quickstart
FIGURE=pics/example_training.png
TABLE=quickstart/results.md
EXTRA=()
TOY=0
CHOSEN=()
while [ $# -gt 0 ]; do
  case "$1" in
    --full) STEPS=2000 ;;
    --steps) STEPS="$2"; shift ;;
    --out) OUT="$2"; FIGURE="$2/example_training.png"; TABLE="$2/results.md"; shift ;;
    --toy) TOY=1 ;;
    --students) read -r -a CHOSEN <<< "$2"; shift ;;
    *) echo "unknown argument $1 (expected --full, --steps N, --out DIR, --toy, --students LIST)" >&2; exit 2 ;;
  esac
  shift
done
TOKENIZER="$OUT/tokenizer/tokenizer.json"
TOKENIZER_DATA=()
if [ "$TOY" = 1 ]; then  # two plays (one held out for eval), short sequences, tiny evals: well under a minute
  PLAY="$("$PY" -c 'from MaxText.data.input_pipeline import shakespeare_files; print(",".join(shakespeare_files()[:2]))')"
  EXTRA=(max_target_length=32 per_device_batch_size=2 eval_steps=1 log_period=1 checkpoint_period=1000 remat_policy=none
         async_checkpointing=false "dataset_path=$PLAY" "jax_cache_dir=$OUT/jax_cache")
  TOKENIZER_DATA=(--dataset_path "$PLAY")
fi
TEACHER_CKPT="$OUT/quickstart_teacher/checkpoints/$STEPS"
STUDENTS=(ce_only alpha_02 alpha_04 alpha_06 alpha_08 alpha_1 hard_alpha_1)
if [ "${#CHOSEN[@]}" -gt 0 ]; then  # a partial study: its figure and table go to OUT, not over the published ones
  STUDENTS=("${CHOSEN[@]}")
  FIGURE="$OUT/example_training.png"
  TABLE="$OUT/results.md"
fi
START=$SECONDS

if [ ! -f "$TOKENIZER" ]; then
  echo "== training a 2048-token BPE tokenizer on the Shakespeare corpus"
  "$PY" MaxText/train_tokenizer.py --type bpe --vocab_size 2048 --output "$OUT/tokenizer" "${TOKENIZER_DATA[@]}"
fi

train() {  # train CONFIG [key=value ...], skipped when its final checkpoint exists
  local name="$1"; shift
  if [ -d "$OUT/$name/checkpoints/$STEPS" ]; then
    echo "== $name: done already"
    return
  fi
  echo "== $name ($((SECONDS - START)) s so far)"
  "$PY" MaxText/train.py "configs/$name.yml" "run_name=$name" "steps=$STEPS" "base_output_directory=$OUT" \
    "tokenizer_path=$TOKENIZER" "eval_interval=$(( STEPS < 100 ? STEPS : 100 ))" "checkpoint_period=100" \
    "${EXTRA[@]}" "$@"
}

train quickstart_teacher
# Students run one at a time so that their tokens/s are comparable; the toy run packs two at once.
PARALLEL=$(( TOY == 1 ? 2 : 1 ))
for student in "${STUDENTS[@]}"; do
  train "$student" "kd_teacher_parameters_path=$TEACHER_CKPT" &
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
done
for pid in $(jobs -p); do wait "$pid"; done

RUNS=()
for student in "${STUDENTS[@]}"; do RUNS+=("$OUT/$student"); done
"$PY" quickstart/plot_results.py --runs "${RUNS[@]}" --teacher "$OUT/quickstart_teacher" --figure "$FIGURE" \
  --table "$TABLE"
echo "== wrote $FIGURE and $TABLE in $((SECONDS - START)) s"
