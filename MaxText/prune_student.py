"""Prunes a teacher checkpoint into a smaller student's starting point (Minitron-style structured pruning).

  python -m MaxText.prune_student base.yml load_parameters_path=TEACHER prune_output_dir=STUDENT \
      prune_num_layers=15 prune_mlp_dim=768 prune_num_query_heads=6 prune_emb_dim=384 \
      dataset_type=text dataset_path=corpus.txt [prune_layer_metric=loss prune_calibration_batches=8 ...]

The model (and tokenizer) keys come from what is saved beside `load_parameters_path` (a converted
checkpoint's model_config.json or a run's config.json); a model key given on the command line must agree.
Importance is measured on `prune_calibration_batches` batches of the same data stream a training run of
this config reads. The output is a parameters-only checkpoint with its model_config.json (the pruned
model keys), the tokenizer files when the teacher folder has them, and prune_report.json (scores,
kept indices, sizes) -- what `load_parameters_path` and the KD keys of a training run take.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only the config's modules here: the functions that run the job import the JAX stack, once the config and
# its files are known to be good (a config error returns without it).
from MaxText import config as config_lib  # noqa: E402
from MaxText.config import storage  # noqa: E402
from MaxText.config.checks import check_prune_targets  # noqa: E402
from MaxText.config.paths import check_output_folder  # noqa: E402
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402
from MaxText.config.saved_files import MODEL_CONFIG_FILE, with_saved_model_keys  # noqa: E402
from MaxText.config.views import MODEL_KEYS  # noqa: E402
from MaxText.training import preflight  # noqa: E402

REPORT_FILE = "prune_report.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_TOKENIZER_KEYS = ("tokenizer_type", "tokenizer_path")


def load_config(argv: list[str]):
  """The config with the source checkpoint's saved model (and tokenizer) keys filled in."""
  first = config_lib.load(argv)
  if not first.load_parameters_path:
    raise config_lib.ConfigError("load_parameters_path: the checkpoint to prune must be given")
  if not first.prune_output_dir:
    raise config_lib.ConfigError("prune_output_dir: the folder to write the pruned checkpoint to must be given")
  return with_saved_model_keys(argv, first)


def calibration_batches(config) -> list[dict]:
  """The first `prune_calibration_batches` batches of the run's training stream, as device arrays."""
  import jax

  from MaxText.data import input_pipeline
  from MaxText.training.runtime import build_corpus, global_batch_size

  it = input_pipeline.make_iterator(config, build_corpus(config), "train", global_batch_size(config))
  return [jax.tree.map(jax.numpy.asarray, next(it)) for _ in range(config.prune_calibration_batches)]


def _count(params) -> int:
  import jax
  import numpy as np

  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def _write_model_config(config, pruned_keys: dict, out_dir: str) -> None:
  keys = {k: getattr(config, k) for k in MODEL_KEYS}
  keys.update(pruned_keys)
  source = config.load_parameters_path
  if storage.isfile(storage.join(source, "tokenizer.json")):  # a converted checkpoint: keep it self-contained
    for name in _TOKENIZER_FILES:
      if storage.isfile(storage.join(source, name)):
        storage.copy(storage.join(source, name), storage.join(out_dir, name))
    keys.update(tokenizer_type="huggingface", tokenizer_path=storage.absolute(out_dir))
  elif config.tokenizer_type != "byte":
    keys.update(tokenizer_type=config.tokenizer_type, tokenizer_path=storage.absolute(config.tokenizer_path))
  with storage.open_file(storage.join(out_dir, MODEL_CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(keys, f, indent=1)


def prune(config) -> dict:
  """Runs the whole job; returns the report it writes."""
  import numpy as np

  from MaxText.distill import pruning
  from MaxText.model import params_io

  check_prune_targets(config)
  out_dir = config.prune_output_dir
  check_output_folder("prune_output_dir", out_dir, ())  # absent or empty: nothing of a user's is overwritten
  params = params_io.read_params_to_host(config.load_parameters_path)
  batches = calibration_batches(config)
  importance = pruning.measure_importance(config, params, batches, config.prune_layer_metric)
  plan = pruning.make_plan(importance, config)
  pruned = pruning.apply_plan(params, plan)
  storage.makedirs(out_dir)
  params_io.save_params(out_dir, pruned)
  pruned_keys = pruning.pruned_model_keys(config, plan)
  _write_model_config(config, pruned_keys, out_dir)
  report = {
    "source": storage.absolute(config.load_parameters_path),
    "parameters": {"before": _count(params), "after": _count(pruned)},
    "model_keys": pruned_keys,
    "layer_metric": config.prune_layer_metric,
    "kept": {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(plan).items()},
    "importance": {k: np.round(np.asarray(v), 6).tolist() for k, v in dataclasses.asdict(importance).items()},
  }
  with storage.open_file(storage.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  return report


def main(argv: list[str]) -> int:
  default_to_cpu_without_accelerator()
  config_lib.silence_async_leftovers()
  try:
    config = load_config(argv[1:])
    check_prune_targets(config)
    preflight.run(config)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  try:
    report = prune(config)
  except config_lib.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  sizes, keys = report["parameters"], report["model_keys"]
  print(
    f"wrote {config.prune_output_dir}: {sizes['before']:,} -> {sizes['after']:,} parameters "
    f"({', '.join(f'{k}={v}' for k, v in keys.items())})"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
