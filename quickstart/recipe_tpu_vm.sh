#!/usr/bin/env bash
# Recipe (not run here): distill Llama-3.1-8B into Llama-3.2-1B on a TPU VM slice.
# Needs: the two Hugging Face checkpoints (safetensors + tokenizer) and your corpus as parquet files
# with a "text" column, on a disk every host can read (or copied to each host's /mnt/data).
set -euo pipefail
TPU_NAME="${TPU_NAME:?set TPU_NAME}"; ZONE="${ZONE:?set ZONE}"
REPO_DIR='~/maxtext-kd'
on_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"; }

# 1. Set up every host: the project's own environment, then JAX for TPU.
on_all "cd $REPO_DIR && bash setup.sh && .venv/bin/pip install -U 'jax[tpu]'"

# 2. Convert the checkpoints once (host 0 writes to the shared disk).
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=0 --command "cd $REPO_DIR && \
  .venv/bin/python -m MaxText.convert_hf_checkpoint --hf_dir /mnt/shared/hf/Llama-3.1-8B \
    --output /mnt/shared/ckpt/llama3.1-8b --model_name llama3.1-8b --dtype bfloat16 && \
  .venv/bin/python -m MaxText.convert_hf_checkpoint --hf_dir /mnt/shared/hf/Llama-3.2-1B \
    --output /mnt/shared/ckpt/llama3.2-1b --model_name llama3.2-1b"

# 3. Launch the same command on every host; jax.distributed finds the slice by itself.
on_all "cd $REPO_DIR && .venv/bin/python MaxText/train.py quickstart/llama3_8b_to_1b_tpu.yml"

# 4. The distilled student as a Hugging Face folder (transformers / vLLM), in bfloat16, from one host.
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=0 --command "cd $REPO_DIR && \
  .venv/bin/python -m MaxText.convert_hf_checkpoint --to_hf \
    --checkpoint /mnt/shared/runs/llama3.1-8b_to_llama3.2-1b --output /mnt/shared/hf/llama3.2-1b-distilled --dtype bfloat16"
