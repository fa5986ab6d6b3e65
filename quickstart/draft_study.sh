#!/usr/bin/env bash
# Speculative-decoding drafts of SmolLM2-135M-Instruct, a first study (docs/generation_and_sft.md):
# the teacher pruned to 8 layers, trained 40 steps of 4 x 256 Shakespeare tokens from the teacher's compact
# top-64 cache with CE, forward-KL KD or TVD KD (equal steps, seed and order), then each draft's measured
# acceptance and speed on four prompts, greedy, batch 1, beside plain decoding.
#   bash quickstart/draft_study.sh            (about 20 minutes on 2 CPU cores, the cache's stages included)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CC=${CC:-outputs/compact_cache}   # benchmarks/compact_cache.py's folder: the imported teacher and the cache
OUT=${OUT:-outputs/draft_study}
mkdir -p "$OUT"
[ -f "$CC/cache_compact/manifest.json" ] || $PY benchmarks/compact_cache.py --out "$CC" --stage sizes
TEACHER=$CC/teacher
DATA=$($PY -c "from MaxText.data.input_pipeline import shakespeare_files as s; import os; print(os.path.dirname(s()[0]))")
COMMON=(tokenizer_type=huggingface "tokenizer_path=$TEACHER" "dataset_path=$DATA" dtype=float32 remat_policy=none
        max_target_length=256 per_device_batch_size=4)
[ -d "$OUT/draft8" ] || $PY -m MaxText.prune_student base.yml "load_parameters_path=$TEACHER" \
  "prune_output_dir=$OUT/draft8" prune_num_layers=8 "${COMMON[@]}"
MODEL=$($PY -c "
import json; k = json.load(open('$OUT/draft8/model_config.json'))
print(' '.join(f'{a}={b}' for a, b in k.items() if a not in ('tokenizer_type', 'tokenizer_path', 'scan_layers')))")
printf '%s\n' '{"prompt": "To be, or not to be, that is the question:"}' \
  '{"prompt": "Friends, Romans, countrymen, lend me your ears;"}' '{"prompt": "Now is the winter of our discontent"}' \
  '{"prompt": "All the world'"'"'s a stage, and all the men and women merely players."}' > "$OUT/prompts.jsonl"
for ARM in "ce:kd_alpha=0.0" "fkl:kd_alpha=1.0" "tvd:kd_alpha=1.0 kd_divergence=tvd"; do
  NAME=${ARM%%:*}
  read -ra KEYS <<< "${ARM#*:}"
  [ -d "$OUT/runs/$NAME/checkpoints/40" ] || $PY MaxText/train.py base.yml "run_name=$NAME" "base_output_directory=$OUT/runs" \
    $MODEL "load_parameters_path=$OUT/draft8" "${COMMON[@]}" use_kd=true "kd_offline_data_dir=$CC/cache_compact" \
    kd_temperature=1.0 "${KEYS[@]}" steps=40 learning_rate=1e-3 checkpoint_period=1000000 log_period=10 > "$OUT/$NAME.log" 2>&1
  for K in 2 4; do
    echo "$NAME k=$K: $($PY -m MaxText.decode base.yml "load_parameters_path=$TEACHER" dtype=float32 \
      "decode_input_path=$OUT/prompts.jsonl" decode_max_new_tokens=48 per_device_batch_size=1 \
      "decode_draft_parameters_path=$OUT/runs/$NAME/checkpoints/40" decode_draft_tokens=$K decode_compare_plain=true \
      2>&1 | grep speculative)"
  done
done
