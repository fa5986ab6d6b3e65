"""The names of what a run and a checkpoint hold on disk, and the model keys saved beside a checkpoint.

The pre-flight checks and the entry points read these before anything heavy is imported (a config or
file error returns without JAX, Orbax or Grain loaded); checkpointing.py and params_io.py use the
same names to write them.
"""

from __future__ import annotations

import json

from MaxText.config import load, storage
from MaxText.config.errors import ConfigError
from MaxText.config.loader import parse_overrides
from MaxText.config.model_keys import NOT_COMPARED
from MaxText.config.views import MODEL_KEYS

PARAMS = "params"
KD_HEAD, TRAIN_STATE, DATA_ITER = "kd_head", "train_state", "data_iter"
FULL_STATE_ITEMS = (PARAMS, TRAIN_STATE)  # what load_full_state_path needs in a step folder
RUN_FILES = ("checkpoints", "tensorboard", "metrics.jsonl", "metrics.jsonl.tmp", "config.json")  # a run's own outputs
MODEL_CONFIG_FILE = "model_config.json"  # model keys of a converted checkpoint (read by KD and --to_hf)
_TOKENIZER_KEYS = ("tokenizer_type", "tokenizer_path")


def run_dir(config) -> str:
  return storage.join(config.base_output_directory, config.run_name or "default_run")


def saved_model_keys(checkpoint_path: str) -> tuple[str, dict] | None:
  """(file, keys) saved beside a checkpoint: a run's config.json two levels up from its step folder,
  or a converted checkpoint's model_config.json inside it; None when there is neither."""
  path = storage.absolute(checkpoint_path)
  candidates = [
    storage.join(path, MODEL_CONFIG_FILE),
    storage.join(storage.dirname(storage.dirname(path)), "config.json"),
  ]
  found = next((c for c in candidates if storage.isfile(c)), None)
  if found is None:
    return None
  with storage.open_file(found, encoding="utf-8") as f:
    return found, json.load(f)


def with_saved_model_keys(argv: list[str], first, forced: dict | None = None):
  """`first` (the config of `argv`) with the model and tokenizer keys saved beside its load_parameters_path
  (a converted or pruned checkpoint's model_config.json, a run's config.json) filled in; a model key given
  on the command line must agree with them. `forced`: the entry point's own keys, applied again."""
  path = first.load_parameters_path
  saved = saved_model_keys(path) if path and storage.isdir(path) else None
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
