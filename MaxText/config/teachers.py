"""`kd_teachers`: the list of frozen teachers of an ensemble run, read from the yml or the command line.

In a yml:

  kd_teachers:
    - {name: big, parameters_path: ckpt/8b, model_name: llama3.1-8b, dtype: bfloat16, weight: 0.7}
    - {name: small, parameters_path: ckpt/3b, model_name: llama3.2-3b, weight: 0.3}

and on the command line the same list in YAML's flow form: `kd_teachers='[{parameters_path: a}, ...]'`.
Each entry is one teacher with the meaning of the single-teacher keys (`kd_teacher_parameters_path`,
`kd_teacher_model_name`, `kd_teacher_overrides`, `kd_teacher_dtype`) plus a `weight` (> 0; the
weights are normalised to sum to 1) and a `name` for its metrics (default teacher0, teacher1, ...).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from MaxText.config.errors import ConfigError

_DTYPES = ("", "bfloat16", "float32", "float16", "int8")


class TeacherSpec(NamedTuple):
  """One ensemble member, as the user wrote it (a NamedTuple: hashable, and it survives dataclasses.asdict)."""

  name: str
  parameters_path: str
  model_name: str = ""  # "" = the student's model_name
  overrides: str = ""  # "key=value,key=value" over the preset
  dtype: str = ""  # "" = dtype
  weight: float = 1.0


def _overrides_text(where: str, value: Any) -> str:
  if isinstance(value, str):
    return value
  if isinstance(value, dict):
    return ",".join(f"{key}={item}" for key, item in value.items())
  raise ConfigError(f"{where}.overrides: expected a mapping or 'key=value,...', got {value!r}")


def _entry(index: int, raw: Any) -> TeacherSpec:
  where = f"kd_teachers[{index}]"
  if not isinstance(raw, dict):
    raise ConfigError(f"{where}: expected a mapping like {{parameters_path: CKPT, weight: 1.0}}, got {raw!r}")
  unknown = sorted(set(raw) - set(TeacherSpec._fields))
  if unknown:
    raise ConfigError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(TeacherSpec._fields)})")
  path = raw.get("parameters_path")
  if not isinstance(path, str) or not path:
    raise ConfigError(f"{where}.parameters_path: every ensemble teacher needs its checkpoint folder")
  name = str(raw.get("name", f"teacher{index}"))
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
    raise ConfigError(f"{where}.name: {name!r} must be letters, digits, '_', '.' or '-' (it names metrics)")
  dtype = str(raw.get("dtype", ""))
  if dtype not in _DTYPES:
    raise ConfigError(f"{where}.dtype: expected one of {_DTYPES}, got {dtype!r}")
  weight = raw.get("weight", 1.0)
  if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
    raise ConfigError(f"{where}.weight: expected a number > 0, got {weight!r}")
  overrides = _overrides_text(where, raw.get("overrides", ""))
  return TeacherSpec(name, path, str(raw.get("model_name", "")), overrides, dtype, float(weight))


def parse_teachers(value: Any) -> tuple[TeacherSpec, ...]:
  """The checked entries of `kd_teachers` (a list of mappings; already-parsed specs pass through)."""
  if isinstance(value, str) and not value.strip():
    return ()
  if not isinstance(value, (list, tuple)):
    raise ConfigError(f"kd_teachers: expected a list of teachers ([{{parameters_path: CKPT}}, ...]), got {value!r}")
  specs = tuple(v if isinstance(v, TeacherSpec) else _entry(i, v) for i, v in enumerate(value))
  names = [spec.name for spec in specs]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ConfigError(f"kd_teachers: the name {repeated[0]!r} is used twice (names tell the metrics apart)")
  return specs


def normalized_weights(specs: tuple[TeacherSpec, ...]) -> tuple[float, ...]:
  total = sum(spec.weight for spec in specs)
  return tuple(spec.weight / total for spec in specs)


def as_plain(value: Any) -> Any:
  """A Config value as JSON writes it (an ensemble's entries as mappings, not bare lists)."""
  if isinstance(value, tuple) and all(isinstance(v, TeacherSpec) for v in value):
    return [spec._asdict() for spec in value]
  return value
