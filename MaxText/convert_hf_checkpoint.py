"""Hugging Face checkpoints in and out: Llama 3.x, Qwen2/2.5 and Qwen3.

  # HF safetensors (single or sharded) -> a parameters-only checkpoint (load_parameters_path,
  # kd_teacher_parameters_path). The model keys come from the HF config.json; --model_name checks
  # them against a preset instead.
  python -m MaxText.convert_hf_checkpoint --hf_dir DIR --output CKPT [--model_name llama3.1-8b] [--dtype bfloat16]

  # a llama.cpp GGUF file (Llama, Qwen2, Qwen3; F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 tensors) -> the same,
  # plus the file's tokenizer and chat template as tokenizer.json / tokenizer_config.json in CKPT
  python -m MaxText.convert_hf_checkpoint --gguf FILE.gguf --output CKPT

  # any checkpoint of a run (run folder, step folder or parameters-only folder) -> a HF folder
  python -m MaxText.convert_hf_checkpoint --to_hf --checkpoint RUN_OR_STEP --output HF_DIR [--dtype bfloat16]

  # ... or a llama.cpp GGUF file (llama.cpp, Ollama, LM Studio): tensors quantized by the gguf package
  python -m MaxText.convert_hf_checkpoint --to_gguf --checkpoint RUN_OR_STEP --output FILE.gguf \
      [--gguf_type f32|f16|bf16|q8_0|q4_0]

Both directions go tensor by tensor (import fills the stacked arrays in place, export writes shard by
shard), so the model is never in memory twice. Only the decoder's parameters are read: the optimizer state
and a feature-KD head are items of their own in a run's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText import config as config_lib  # noqa: E402
from MaxText.config import storage
from MaxText.config.loader import parse_overrides  # noqa: E402
from MaxText.config.model_keys import NOT_COMPARED  # noqa: E402
from MaxText.config.paths import check_output_folder, check_reachable, check_scheme  # noqa: E402
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402
from MaxText.config.saved_files import MODEL_CONFIG_FILE, saved_model_keys  # noqa: E402
from MaxText.config.views import MODEL_KEYS  # noqa: E402
from MaxText.data import gguf_tokenizer  # noqa: E402
from MaxText.model import gguf_export, gguf_weights, hf_config, hf_export, hf_weights  # noqa: E402

# JAX and Orbax (model/params_io.py) are imported by the functions that read or write a checkpoint, so a bad
# flag or a file the converter cannot read is reported without them.

_RUN_KEYS = (*MODEL_KEYS, "tokenizer_type", "tokenizer_path", "max_target_length")


class ConversionError(config_lib.UserError, ValueError):
  """A bad flag or output folder of the converter."""


def _progress(desc: str, unit: str):
  """Wraps a loop in a tqdm bar on a terminal's stderr (none in logs; without tqdm the loop runs bare)."""
  try:
    from tqdm import tqdm
  except ImportError:
    return iter
  return lambda iterable: tqdm(iterable, desc=desc, unit=unit, file=sys.stderr, disable=None)


def _parse_size(text: str) -> int:
  units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
  upper = text.strip().upper()
  for unit, factor in units.items():
    if upper.endswith(unit) and upper[: -len(unit)].strip().replace(".", "", 1).isdigit():
      return int(float(upper[: -len(unit)]) * factor)
  if upper.isdigit():
    return int(upper)
  raise ConversionError(f"--max_shard_size: expected a size such as 5GB or 500MB, got {text!r}")


def _require_empty(path: str) -> None:
  if storage.isdir(path) and storage.listdir(path):
    raise ConversionError(f"--output: {path!r} already exists and is not empty; nothing was written")
  check_output_folder("--output", path, ())  # a file, or a folder that cannot be written


def _import_config(args, hf: dict, source: str):
  """The model config: from the HF config fields, or the named preset checked against them."""
  hf_keys = hf_config.model_keys_from_hf(hf)
  extra = parse_overrides(args.set)
  if args.model_name:
    kept = {k: hf_keys[k] for k in NOT_COMPARED if k in hf_keys}  # the file's context length, not the preset's
    config = config_lib.load_dict({"model_name": args.model_name, **kept, **extra})
    hf_config.check_matches(hf_keys, config, source)
    return config
  return config_lib.load_dict({"model_name": "default", **hf_keys, **extra})


def _saved_model_keys(config, tokenizer_dir: str) -> dict:
  keys = {k: getattr(config, k) for k in MODEL_KEYS}
  if storage.isfile(storage.join(tokenizer_dir, "tokenizer.json")):
    keys.update(tokenizer_type="huggingface", tokenizer_path=storage.absolute(tokenizer_dir))
  return keys


def _write_checkpoint(args, config, tensors, tokenizer_dir: str) -> str:
  import jax

  from MaxText.model import params_io

  dtype, progress = hf_export.DTYPES[args.dtype], _progress("converting", "parameter")
  # Placed as JAX arrays one by one: Orbax then writes them without another full host copy.
  params = hf_weights.hf_to_params(tensors, config, dtype, progress, place=jax.device_put)
  params_io.save_params(args.output, params)
  with storage.open_file(storage.join(args.output, MODEL_CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(_saved_model_keys(config, tokenizer_dir), f, indent=1)
  count = sum(x.size for x in _leaves(params))
  return f"wrote {args.output} ({count:,} parameters, {args.dtype})"


def hf_to_checkpoint(args) -> str:
  source = storage.join(args.hf_dir, "config.json")
  config = _import_config(args, hf_config.read_hf_config(args.hf_dir), source)
  _require_empty(args.output)
  return _write_checkpoint(args, config, hf_weights.LazySafetensors(args.hf_dir), args.hf_dir)


def gguf_to_checkpoint(args) -> str:
  """A GGUF file -> parameters, model_config.json and the file's tokenizer, all in --output."""
  gguf_file = gguf_weights.GGUFFile(args.gguf)
  hf = gguf_weights.hf_config_of(gguf_file)
  config = _import_config(args, hf, args.gguf)
  gguf_tokenizer.build_tokenizer(gguf_file.metadata, args.gguf)  # refuse a tokenizer it cannot write first
  _require_empty(args.output)
  storage.makedirs(args.output)
  gguf_tokenizer.write_tokenizer_files(gguf_file.metadata, args.gguf, args.output, hf["max_position_embeddings"])
  message = _write_checkpoint(args, config, gguf_weights.GGUFTensors(gguf_file, hf), args.output)
  return message + "; tokenizer.json and tokenizer_config.json from the file's metadata"


def _run_config(step_dir: str, args):
  """The model/tokenizer keys of a checkpoint: its run's config.json, a converted model_config.json, or flags."""
  extra = parse_overrides(args.set)
  if args.model_name:
    return config_lib.load_dict({"model_name": args.model_name, **extra})
  saved = saved_model_keys(step_dir)
  if saved is None:
    raise ConversionError(f"--checkpoint: no config.json of a run found for {step_dir!r}; pass --model_name")
  keys = {k: saved[1][k] for k in _RUN_KEYS if k in saved[1]}
  return config_lib.load_dict({**keys, "model_name": "default", **extra})


def checkpoint_to_hf(args) -> str:
  import jax

  from MaxText.model import params_io

  step_dir = params_io.latest_step_dir(args.checkpoint)
  config = _run_config(step_dir, args)
  hf_config.architecture_of(config)  # refuse an inexpressible model before reading anything
  max_shard_bytes = _parse_size(args.max_shard_size)
  _require_empty(args.output)
  params = jax.tree.map(np.asarray, params_io.read_params_to_host(step_dir))
  progress = _progress("writing", "shard")
  shards = hf_export.write_hf_dir(params, config, args.output, args.dtype, max_shard_bytes, progress)
  return f"wrote {args.output} from {step_dir} ({shards} safetensors file(s), {args.dtype})"


def checkpoint_to_gguf(args) -> str:
  import jax

  from MaxText.model import params_io

  step_dir = params_io.latest_step_dir(args.checkpoint)
  config = _run_config(step_dir, args)
  gguf_export.check_exportable(config, args.gguf_type)  # refuse an inexpressible model before reading anything
  if storage.exists(args.output):
    raise ConversionError(f"--output: {args.output!r} exists; name a new file (nothing was written)")
  check_output_folder("--output", storage.dirname(storage.absolute(args.output)), ("*",))
  params = jax.tree.map(np.asarray, params_io.read_params_to_host(step_dir))
  storage.makedirs(storage.dirname(storage.absolute(args.output)))  # as --to_hf does with its folder
  summary = gguf_export.write_gguf(params, config, args.output, args.gguf_type)
  return f"wrote {args.output} from {step_dir} ({args.gguf_type}: {summary})"


def _leaves(tree):
  for value in tree.values():
    yield from (_leaves(value) if isinstance(value, dict) else [value])


class _OneLineParser(argparse.ArgumentParser):
  def error(self, message: str):  # one line, like every other user error (argparse adds a usage block)
    self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv):
  parser = _OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--to_hf", action="store_true", help="export a checkpoint of a run to a Hugging Face folder")
  parser.add_argument("--to_gguf", action="store_true", help="export a checkpoint of a run to one GGUF file")
  parser.add_argument("--gguf_type", default="f16", help=f"with --to_gguf: {' | '.join(gguf_export.GGUF_TYPES)}")
  parser.add_argument("--hf_dir", help="Hugging Face folder to import (without --to_hf)")
  parser.add_argument("--gguf", help="llama.cpp GGUF file to import (instead of --hf_dir)")
  parser.add_argument("--checkpoint", help="run folder, step folder or parameters-only folder (with --to_hf)")
  parser.add_argument("--output", required=True, help="folder to write; must not exist or be empty")
  parser.add_argument("--model_name", default="", help="preset under MaxText/configs/models/ (checked / used)")
  parser.add_argument("--dtype", default="float32", choices=sorted(hf_export.DTYPES))
  parser.add_argument("--max_shard_size", default="5GB", help="with --to_hf: split safetensors past this size")
  parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config keys over the preset")
  args = parser.parse_args(argv)
  for flag in ("hf_dir", "gguf", "checkpoint", "output"):
    if getattr(args, flag):
      try:
        check_scheme(f"--{flag}", getattr(args, flag))
        check_reachable(f"--{flag}", getattr(args, flag))
      except config_lib.ConfigError as e:
        parser.exit(2, f"error: {e}\n")
  exporting = args.to_hf or args.to_gguf
  if args.to_hf and args.to_gguf:
    parser.error("--to_hf and --to_gguf: give one")
  if exporting and args.checkpoint is None:
    parser.error(f"--checkpoint is required with --{'to_hf' if args.to_hf else 'to_gguf'}")
  if not exporting and (args.hf_dir is None) == (args.gguf is None):
    parser.error("exactly one of --hf_dir and --gguf is required without --to_hf or --to_gguf")
  if args.to_gguf and args.gguf_type not in gguf_export.GGUF_TYPES:
    parser.error(f"--gguf_type: expected one of {', '.join(gguf_export.GGUF_TYPES)}, got {args.gguf_type!r}")
  return args


def main(argv: list[str] | None = None) -> None:
  default_to_cpu_without_accelerator()
  config_lib.silence_async_leftovers()
  args = parse_args(argv)
  try:
    if args.to_hf:
      message = checkpoint_to_hf(args)
    elif args.to_gguf:
      message = checkpoint_to_gguf(args)
    else:
      message = gguf_to_checkpoint(args) if args.gguf else hf_to_checkpoint(args)
  except config_lib.UserError as e:
    sys.exit(f"error: {e}")
  print(message)


if __name__ == "__main__":
  main()
