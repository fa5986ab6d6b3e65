"""Loads base.yml, a model preset, derived ymls and `key=value` overrides into one frozen, typed Config.

Every key and its type come from `configs/base.yml` (the default's type is the key's type); every
check on values lives here and runs before anything is compiled. Precedence:
base.yml < yml named on the command line (and its `base_config` chain) < model preset < command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
BASE_YML = os.path.join(CONFIG_DIR, "base.yml")
MODELS_DIR = os.path.join(CONFIG_DIR, "models")
# Keys that only steer loading and never reach the Config.
_META_KEYS = ("base_config",)


class ConfigError(ValueError):
  """A bad key or value: the message names the key and what was expected."""


def _read_yaml(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      data = yaml.safe_load(f)
  except OSError as e:
    raise ConfigError(f"config file {path!r} cannot be read: {e.strerror}") from None
  except yaml.YAMLError as e:
    raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from None
  if data is None:
    return {}
  if not isinstance(data, dict):
    raise ConfigError(f"config file {path!r} must hold a mapping of key: value, got {type(data).__name__}")
  return data


def resolve_yml(name: str, relative_to: str = CONFIG_DIR) -> str:
  """`base.yml` given bare resolves to MaxText/configs/base.yml; other names relative to the referrer."""
  for candidate in (name, os.path.join(relative_to, name), os.path.join(CONFIG_DIR, name)):
    if os.path.isfile(candidate):
      return candidate
  raise ConfigError(f"config file {name!r} not found (looked in ., {relative_to} and {CONFIG_DIR})")


def key_comments() -> dict[str, str]:
  """The one-line comment of every key in base.yml, for --help."""
  comments = {}
  with open(BASE_YML, encoding="utf-8") as f:
    for line in f:
      match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):\s*(.*?)\s+#\s*(.*)$", line)
      if match:
        comments[match.group(1)] = match.group(3)
  return comments


def defaults() -> dict[str, Any]:
  return _read_yaml(BASE_YML)


def _coerce(key: str, value: Any, default: Any) -> Any:
  """Casts `value` to the type of `default` or raises a one-line ConfigError naming the key."""
  expected = type(default)
  if expected is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
      return value.lower() == "true"
    raise ConfigError(f"{key}: expected true or false, got {value!r}")
  if expected is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    raise ConfigError(f"{key}: expected an integer, got {value!r}")
  if expected is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    raise ConfigError(f"{key}: expected a number, got {value!r}")
  if expected is str:
    if isinstance(value, str):
      return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return str(value)
    raise ConfigError(f"{key}: expected a string, got {value!r}")
  raise ConfigError(f"{key}: unsupported default type {expected.__name__} in base.yml")


def _check_known(key: str, known: Sequence[str], source: str) -> None:
  if key in known:
    return
  near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
  hint = f"; did you mean {near[0]!r}?" if near else ""
  raise ConfigError(f"unknown config key {key!r} in {source}{hint}")


def _parse_cli_value(raw: str) -> Any:
  # YAML scalars: "3" -> 3, "1e-4" -> 1e-4, "true" -> True, "abc" -> "abc".
  try:
    value = yaml.safe_load(raw)
  except yaml.YAMLError:
    return raw
  if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", raw.strip()):
    return float(raw)  # PyYAML reads "1e-4" (no dot) as a string
  return raw if value is None else value


def _load_chain(path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
  """Reads a yml and, first, the `base_config` it names (recursively); later files win."""
  real = os.path.realpath(path)
  if real in seen:
    raise ConfigError(f"config file {path!r}: base_config chain loops back on itself")
  data = _read_yaml(path)
  parent = data.get("base_config")
  if real == os.path.realpath(BASE_YML) or parent is None:
    merged = {}  # base.yml itself is always the bottom layer (see merge_layers)
  else:
    merged = _load_chain(resolve_yml(str(parent), os.path.dirname(path)), (*seen, real))
  merged.update({k: v for k, v in data.items() if k not in _META_KEYS})
  return merged


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
  overrides = {}
  for arg in args:
    if "=" not in arg:
      raise ConfigError(f"command-line argument {arg!r}: expected key=value")
    key, raw = arg.split("=", 1)
    overrides[key.strip()] = _parse_cli_value(raw)
  return overrides


def load_model_preset(model_name: str) -> dict[str, Any]:
  if model_name == "default":
    return {}
  path = os.path.join(MODELS_DIR, f"{model_name}.yml")
  if not os.path.isfile(path):
    presets = sorted(p[:-4] for p in os.listdir(MODELS_DIR) if p.endswith(".yml"))
    raise ConfigError(f"model_name: no preset {model_name!r} in configs/models (have: {', '.join(presets)})")
  return _read_yaml(path)


def merge_layers(layers: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
  """Merges (source, mapping) layers over the base.yml defaults, checking keys and coercing types."""
  base = defaults()
  known = list(base)
  values = dict(base)
  for source, layer in layers:
    for key, value in layer.items():
      _check_known(key, known, source)
      values[key] = _coerce(key, value, base[key])
  return values


# ---- value checks: (key, predicate, what was expected) ----
def _positive(v):
  return v > 0


def _non_negative(v):
  return v >= 0


def _fraction(v):
  return 0.0 <= v <= 1.0


def _axis(v):
  return v == -1 or v >= 1


_ONE_OF = {
  "dataset_type": ("synthetic", "text", "jsonl", "parquet", "arrayrecord"),
  "tokenizer_type": ("byte", "sentencepiece", "huggingface"),
  "dtype": ("bfloat16", "float32", "float16"),
  "weight_dtype": ("bfloat16", "float32"),
  "remat_policy": ("none", "full", "save_dots"),
  "kd_alpha_schedule": ("constant", "linear", "cosine"),
  "kd_temperature_schedule": ("constant", "linear", "cosine"),
  "kd_beta_schedule": ("constant", "linear", "cosine"),
  "kd_feature_loss_type": ("cosine", "l2"),
  "kd_teacher_dtype": ("", "bfloat16", "float32", "float16"),
}

_CHECKS: list[tuple[str, Callable[[Any], bool], str]] = [
  *[
    (k, _positive, "a positive integer")
    for k in (
      "steps",
      "vocab_size",
      "emb_dim",
      "num_decoder_layers",
      "num_query_heads",
      "num_kv_heads",
      "head_dim",
      "mlp_dim",
      "max_target_length",
      "log_period",
      "loss_chunk_size",
      "eval_steps",
      "checkpoint_period",
      "max_to_keep",
      "gradient_accumulation_steps",
    )
  ],
  *[
    (k, _positive, "a positive number")
    for k in (
      "learning_rate",
      "per_device_batch_size",
      "rope_theta",
      "normalization_layer_epsilon",
      "init_std",
      "kd_temperature",
    )
  ],
  *[
    (k, _non_negative, "a number >= 0")
    for k in (
      "adam_weight_decay",
      "gradient_clipping_threshold",
      "z_loss_multiplier",
      "eval_interval",
      "rope_scaling_factor",
      "adam_eps",
      "grain_worker_count",
      "profiler_steps",
      "kd_top_k",
    )
  ],
  *[
    (k, _fraction, "a value in [0, 1]")
    for k in ("warmup_steps_fraction", "cosine_learning_rate_final_fraction", "eval_fraction", "kd_alpha", "kd_top_p")
  ],
  ("kd_alpha_end", lambda v: v == -1.0 or 0.0 <= v <= 1.0, "a value in [0, 1] (or -1 = unset)"),
  ("kd_beta", _non_negative, "a number >= 0"),
  ("kd_beta_end", lambda v: v == -1.0 or v >= 0, "a number >= 0 (or -1 = unset)"),
  ("kd_temperature_end", lambda v: v == -1.0 or v > 0, "a positive number (or -1 = unset)"),
  *[(k, lambda v: 0.0 <= v < 1.0, "a value in [0, 1)") for k in ("adam_b1", "adam_b2")],
  *[
    (f"{p}_{a}_parallelism", _axis, "-1 (fill) or a positive integer")
    for p in ("ici", "dcn")
    for a in ("data", "fsdp", "tensor")
  ],
]


def _check_relations(v: dict[str, Any]) -> None:
  if v["num_query_heads"] % v["num_kv_heads"]:
    raise ConfigError(f"num_query_heads: {v['num_query_heads']} must be a multiple of num_kv_heads={v['num_kv_heads']}")
  if v["rope_scaling_factor"] and v["rope_high_freq_factor"] <= v["rope_low_freq_factor"]:
    raise ConfigError("rope_high_freq_factor: must be larger than rope_low_freq_factor when RoPE scaling is on")
  if v["dataset_type"] in ("jsonl", "parquet", "arrayrecord") and not v["dataset_path"]:
    raise ConfigError(f"dataset_path: required for dataset_type={v['dataset_type']}")
  if v["tokenizer_type"] != "byte" and not v["tokenizer_path"]:
    raise ConfigError(f"tokenizer_path: required for tokenizer_type={v['tokenizer_type']}")
  for key in ("tokenizer_path", "load_parameters_path"):
    if v[key] and not os.path.exists(v[key]):
      raise ConfigError(f"{key}: {v[key]!r} does not exist")


def validate(values: dict[str, Any]) -> None:
  for key, choices in _ONE_OF.items():
    if values[key] not in choices:
      raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {values[key]!r}")
  for key, ok, expected in _CHECKS:
    value = values[key]
    if isinstance(value, float) and not math.isfinite(value) or not ok(value):
      raise ConfigError(f"{key}: expected {expected}, got {value!r}")
  _check_relations(values)
  kd_config.validate_kd(values)


def _make_config_class(base: dict[str, Any]) -> type:
  fields = [(key, type(value)) for key, value in base.items()]
  return dataclasses.make_dataclass("Config", fields, frozen=True)


Config = _make_config_class(defaults())


def initialize(argv: Sequence[str], overrides: dict[str, Any] | None = None) -> Any:
  """`argv` as MaxText takes it: [config.yml, key=value, ...] (the script name already dropped).

  `overrides` (library use) are applied like command-line values, after `argv`'s.
  """
  if not argv:
    raise ConfigError("expected a config yml as the first argument (for example base.yml)")
  yml_path = resolve_yml(argv[0], os.getcwd())
  from_yml = _load_chain(yml_path)
  cli = {**parse_overrides(argv[1:]), **(overrides or {})}
  staged = merge_layers([(yml_path, from_yml), ("the command line", cli)])
  preset = load_model_preset(staged["model_name"])
  values = merge_layers(
    [(yml_path, from_yml), (f"model preset {staged['model_name']}", preset), ("the command line", cli)]
  )
  validate(values)
  return Config(**values)


def from_dict(overrides: dict[str, Any]) -> Any:
  """A Config from base.yml + preset + overrides, for tests and library use."""
  return initialize(["base.yml"], overrides)


def non_default_keys(config: Any) -> dict[str, Any]:
  base = defaults()
  return {k: v for k, v in dataclasses.asdict(config).items() if base[k] != v}


def help_text() -> str:
  base, comments = defaults(), key_comments()
  width = max(len(k) for k in base)
  return "\n".join(f"{k:<{width}}  {base[k]!r:<14} {comments.get(k, '')}" for k in base)


# The distillation keys' checks and the teacher's config live in kd_config.py (imported last: it uses
# the helpers above); they are re-exported here so that callers keep one config module to ask.
from MaxText import kd_config  # noqa: E402
from MaxText.kd_config import (  # noqa: E402, F401
  MODEL_KEYS,
  feature_layer_pairs,
  feature_projection_shape,
  teacher_config,
  teacher_model_values,
  uses_features,
)
