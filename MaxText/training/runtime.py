"""What every job does the same way before its loop: multi-host start-up, the global batch, the
tokenized corpus, and host batches made global arrays."""

from __future__ import annotations

import jax
import numpy as np

from MaxText.config import load, storage
from MaxText.config.errors import ConfigError
from MaxText.config.loader import parse_overrides
from MaxText.config.model_keys import NOT_COMPARED
from MaxText.config.views import MODEL_KEYS
from MaxText.data import input_pipeline
from MaxText.data.tokenizer import build_tokenizer, check_fits_model
from MaxText.model import params_io

_TOKENIZER_KEYS = ("tokenizer_type", "tokenizer_path")


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
  return input_pipeline.Corpus(config, tokenizer)


def to_global(batch: dict, batch_sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v)) for k, v in batch.items()}


def with_saved_model_keys(argv: list[str], first, forced: dict | None = None):
  """`first` (the config of `argv`) with the model and tokenizer keys saved beside its load_parameters_path
  (a converted or pruned checkpoint's model_config.json, a run's config.json) filled in; a model key given
  on the command line must agree with them. `forced`: the entry point's own keys, applied again."""
  path = first.load_parameters_path
  saved = params_io.saved_model_keys(path) if path and storage.isdir(path) else None
  if saved is None:
    return first
  source, keys = saved
  explicit = parse_overrides(argv[1:])
  filled = {}
  for key in (*MODEL_KEYS, *_TOKENIZER_KEYS):
    if key not in keys or key == "scan_layers":
      continue
    if key in explicit and key in MODEL_KEYS and key not in NOT_COMPARED and explicit[key] != keys[key]:
      raise ConfigError(f"{key}: {explicit[key]!r} given, but {source} says {keys[key]!r}")
    if key not in explicit:
      filled[key] = keys[key]
  return load(argv, {**(forced or {}), **filled})
