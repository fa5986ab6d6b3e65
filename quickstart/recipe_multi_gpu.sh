#!/usr/bin/env bash
# Recipe (not run here): distill Llama-3.1-8B into Llama-3.2-1B on one host with 8 GPUs.
# Needs: the two Hugging Face checkpoints (safetensors + tokenizer) under /mnt/shared/hf and your corpus
# as parquet files with a "text" column under /mnt/data/corpus.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. The project's environment, then JAX for CUDA 12.
bash setup.sh
.venv/bin/pip install -U "jax[cuda12]"

# 2. Convert the checkpoints once.
.venv/bin/python -m MaxText.convert_hf_checkpoint --hf_dir /mnt/shared/hf/Llama-3.1-8B \
  --output /mnt/shared/ckpt/llama3.1-8b --model_name llama3.1-8b --dtype bfloat16
.venv/bin/python -m MaxText.convert_hf_checkpoint --hf_dir /mnt/shared/hf/Llama-3.2-1B \
  --output /mnt/shared/ckpt/llama3.2-1b --model_name llama3.2-1b

# 3. One process drives all 8 GPUs (fsdp over them). For several hosts, run this on each with
#    jax_distributed_initialize=true coordinator_address=HOST0:1234 num_processes=N process_id=I.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 .venv/bin/python MaxText/train.py quickstart/llama3_8b_to_1b_gpu.yml

# 4. The distilled student as a Hugging Face folder (transformers / vLLM), in bfloat16.
.venv/bin/python -m MaxText.convert_hf_checkpoint --to_hf \
  --checkpoint /mnt/shared/runs/llama3.1-8b_to_llama3.2-1b --output /mnt/shared/hf/llama3.2-1b-distilled --dtype bfloat16
