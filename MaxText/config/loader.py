"""Reads base.yml, a model preset, derived ymls and `key=value` overrides into merged, typed values.

Every key and its type come from `configs/base.yml` (the default's type is the key's type). This
module only reads and merges; the checks on values live in checks.py and kd_checks.py, which import
it (never the other way round). Precedence:
base.yml < yml named on the command line (and its `base_config` chain) < model preset < command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from collections.abc import Sequence
from typing import Any

import yaml

from MaxText.config import mixture, upstream
from MaxText.config.errors import ConfigError
from MaxText.config.model_keys import MODEL_KEYS
from MaxText.config.teachers import parse_teachers

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
BASE_YML = os.path.join(CONFIG_DIR, "base.yml")
MODELS_DIR = os.path.join(CONFIG_DIR, "models")
# Keys that only steer loading and never reach the Config.
_META_KEYS = ("base_config",)
# Keys whose value is a list (`[]` in base.yml): each has its parser, which returns a hashable tuple.
_LIST_PARSERS = {"kd_teachers": parse_teachers, "dataset_mixture": mixture.parse_mixture}


def _read_yaml(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      data = yaml.safe_load(f)
  except OSError as e:
    raise ConfigError(f"config file {path!r} cannot be read: {e.strerror}") from None
  except yaml.YAMLError as e:
    raise ConfigError(f"config file {path!r} is not valid YAML: {' '.join(str(e).split())}") from None
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


@functools.cache
def _base_defaults() -> tuple[tuple[str, Any], ...]:
  # list defaults become tuples, the type their parsed values have (a Config stays hashable)
  return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in _read_yaml(BASE_YML).items())


def defaults() -> dict[str, Any]:
  """Every key with its base.yml default (read from disk once per process)."""
  return dict(_base_defaults())


def coerce(key: str, value: Any, default: Any) -> Any:
  """Casts `value` to the type of `default` or raises a one-line ConfigError naming the key."""
  expected = type(default)
  if expected is tuple:
    return _LIST_PARSERS[key](value)
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


def check_known(key: str, known: Sequence[str], source: str) -> None:
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


def _load_chain(path: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
  """Reads a yml and, first, the `base_config` it names (recursively); later files win. Returns its keys
  (upstream's names made canonical file by file) and its student_overrides / teacher_overrides blocks."""
  real = os.path.realpath(path)
  if real in seen:
    raise ConfigError(f"config file {path!r}: base_config chain loops back on itself")
  data, blocks = upstream.split_blocks(_read_yaml(path), path)
  parent = data.get("base_config")
  if real == os.path.realpath(BASE_YML) or parent is None:
    merged, merged_blocks = {}, {name: {} for name in upstream.BLOCKS}  # base.yml is always the bottom layer
  else:
    merged, merged_blocks = _load_chain(resolve_yml(str(parent), os.path.dirname(path)), (*seen, real))
  own = {k: v for k, v in data.items() if k not in _META_KEYS}
  merged.update(upstream.translate(own, path, defaults()))
  for name, block in blocks.items():
    merged_blocks[name].update(block)
  return merged, merged_blocks


def parse_overrides(args: Sequence[str], source: str = "") -> dict[str, Any]:
  """`key=value` strings -> values; `source` names the key they came from (default: the command line)."""
  overrides = {}
  for arg in args:
    if "=" not in arg:
      where = f"{source}: entry" if source else "command-line argument"
      raise ConfigError(f"{where} {arg!r}: expected key=value")
    key, raw = arg.split("=", 1)
    overrides[key.strip()] = _parse_cli_value(raw)
  return overrides


def load_model_preset(model_name: str) -> dict[str, Any]:
  return dict(_model_preset(model_name))


@functools.cache
def _model_preset(model_name: str) -> tuple[tuple[str, Any], ...]:
  if model_name == "default":
    return ()
  path = os.path.join(MODELS_DIR, f"{model_name}.yml")
  if not os.path.isfile(path):
    presets = sorted(p[:-4] for p in os.listdir(MODELS_DIR) if p.endswith(".yml"))
    raise ConfigError(f"model_name: no preset {model_name!r} in configs/models (have: {', '.join(presets)})")
  return tuple(_read_yaml(path).items())


def merge_layers(layers: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
  """Merges (source, mapping) layers over the base.yml defaults (and upstream MaxText's extra keys, which
  `upstream.resolve` turns into canonical ones), checking keys and coercing types."""
  base = {**defaults(), **upstream.EXTRA_DEFAULTS}
  known = list(base)
  values = dict(base)
  for source, layer in layers:
    for key, value in layer.items():
      check_known(key, known, source)
      values[key] = coerce(key, value, base[key])
  return values


def _make_config_class(base: dict[str, Any]) -> type:
  fields = [(key, type(value)) for key, value in base.items()]
  return dataclasses.make_dataclass("Config", fields, frozen=True)


Config = _make_config_class(defaults())


def merged_values(argv: Sequence[str], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """`argv` as MaxText takes it: [config.yml, key=value, ...] (the script name already dropped), merged
  and coerced but not yet checked. `overrides` (library use) apply like command-line values, after `argv`'s.
  Precedence as upstream MaxText's: yml < model preset < command line < student_overrides; teacher_overrides
  set the kd_teacher_* keys (config/upstream.py).
  """
  if not argv:
    raise ConfigError("expected a config yml as the first argument (for example base.yml)")
  yml_path = resolve_yml(argv[0], os.getcwd())
  from_yml, blocks = _load_chain(yml_path)
  cli, cli_blocks = upstream.split_blocks({**parse_overrides(argv[1:]), **(overrides or {})}, "the command line")
  cli = upstream.translate(cli, "the command line", defaults())
  student_block = {**blocks["student_overrides"], **cli_blocks["student_overrides"]}
  teacher_block = {**blocks["teacher_overrides"], **cli_blocks["teacher_overrides"]}
  student = upstream.translate(student_block, "student_overrides", defaults())
  teacher = upstream.teacher_layer(teacher_block, MODEL_KEYS, defaults())
  for key, value in teacher.items():
    for where, layer in (("the command line", cli), (yml_path, from_yml)):
      if key in layer and layer[key] not in (value, defaults()[key]):
        raise ConfigError(f"teacher_overrides sets {key}={value!r} and {where} {key}={layer[key]!r}; give one")
  top = [("the command line", cli), ("student_overrides", student), ("teacher_overrides", teacher)]
  staged = merge_layers([(yml_path, from_yml), *top])
  preset = load_model_preset(staged["model_name"])
  values = merge_layers([(yml_path, from_yml), (f"model preset {staged['model_name']}", preset), *top])
  upstream.check_teacher_given(teacher_block, values)
  return mixture.resolve(upstream.resolve(values))


def typed_names(argv: Sequence[str]) -> dict[str, str]:
  """{canonical key: the upstream name the user wrote it as} on the command line (a student_overrides
  entry prefixed by its block) and in the top yml file, for error messages; {} where argv cannot be read."""
  try:
    from_yml, blocks = upstream.split_blocks(_read_yaml(resolve_yml(argv[0], os.getcwd())), argv[0])
    cli, cli_blocks = upstream.split_blocks(parse_overrides(argv[1:]), "the command line")
  except (ConfigError, IndexError):
    return {}
  names = upstream.typed_names(from_yml)
  names.update(upstream.typed_names(cli))
  for layer in (blocks["student_overrides"], cli_blocks["student_overrides"]):
    names.update(upstream.typed_names(layer, "student_overrides."))
  return names


def non_default_keys(config: Any) -> dict[str, Any]:
  base = defaults()
  return {k: v for k, v in dataclasses.asdict(config).items() if base[k] != v}


def help_text() -> str:
  base, comments = defaults(), key_comments()
  width = max(len(k) for k in base)
  return "\n".join(f"{k:<{width}}  {base[k]!r:<14} {comments.get(k, '')}" for k in base)
