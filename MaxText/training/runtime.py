"""What every job does the same way before its loop: multi-host start-up, the global batch, the
tokenized corpus, and host batches made global arrays."""

from __future__ import annotations

import jax
import numpy as np

from MaxText.config.errors import ConfigError
from MaxText.config.saved_files import with_saved_model_keys  # noqa: F401 - re-exported for the jobs
from MaxText.data import input_pipeline
from MaxText.data.tokenizer import build_tokenizer, check_fits_model


def maybe_initialize_distributed(config) -> None:
  if not config.jax_distributed_initialize:
    return
  kwargs = {}
  if config.coordinator_address:
    kwargs = {
      "coordinator_address": config.coordinator_address,
      "num_processes": config.num_processes or None,
      "process_id": config.process_id if config.process_id >= 0 else None,
    }
  jax.distributed.initialize(**kwargs)


def global_batch_size(config) -> int:
  """Global batch from per_device_batch_size; checked against devices, processes and accumulation."""
  exact = config.per_device_batch_size * jax.device_count()
  size = int(round(exact))
  if abs(exact - size) > 1e-9 or size < 1:
    raise ConfigError(
      f"per_device_batch_size: {config.per_device_batch_size} x {jax.device_count()} devices "
      f"is not a whole number of sequences"
    )
  for divisor, key in (
    (jax.process_count(), "process count"),
    (config.gradient_accumulation_steps, "gradient_accumulation_steps"),
  ):
    if size % divisor:
      raise ConfigError(f"per_device_batch_size: global batch {size} is not divisible by the {key} ({divisor})")
  return size


def build_corpus(config):
  """The tokenized corpus (None for synthetic data); the tokenizer must fit the model even then."""
  tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_path)
  check_fits_model(tokenizer, config.vocab_size)
  if config.dataset_type == "synthetic":
    return None
  teacher_tokenizer = None
  if config.kd_teacher_tokenizer_path:  # cross-tokenizer KD: the teacher reads its own token stream
    teacher_tokenizer = build_tokenizer("huggingface", config.kd_teacher_tokenizer_path)
  return input_pipeline.build_corpus(config, tokenizer, teacher_tokenizer)


def to_global(batch: dict, batch_sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v)) for k, v in batch.items()}
