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

from typing import Any, NamedTuple

from MaxText.config.entries import check_fields, check_name, parse_entries, positive_weight
from MaxText.config.errors import ConfigError, choices_text

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
  check_fields(where, raw, TeacherSpec._fields, "{parameters_path: CKPT, weight: 1.0}")
  path = raw.get("parameters_path")
  if not isinstance(path, str) or not path:
    raise ConfigError(f"{where}.parameters_path: every ensemble teacher needs its checkpoint folder")
  name = str(raw.get("name", f"teacher{index}"))
  check_name(where, name)
  dtype = str(raw.get("dtype", ""))
  if dtype not in _DTYPES:
    raise ConfigError(f"{where}.dtype: expected one of {choices_text(_DTYPES)}, got {dtype!r}")
  weight = positive_weight(where, raw.get("weight", 1.0))
  overrides = _overrides_text(where, raw.get("overrides", ""))
  return TeacherSpec(name, path, str(raw.get("model_name", "")), overrides, dtype, weight)


def parse_teachers(value: Any) -> tuple[TeacherSpec, ...]:
  """The checked entries of `kd_teachers` (a list of mappings; already-parsed specs pass through)."""
  return parse_entries("kd_teachers", value, TeacherSpec, _entry, "teachers ([{parameters_path: CKPT}, ...])")


def normalized_weights(specs: tuple[TeacherSpec, ...]) -> tuple[float, ...]:
  total = sum(spec.weight for spec in specs)
  return tuple(spec.weight / total for spec in specs)


def as_plain(value: Any) -> Any:
  """A Config value as JSON writes it (list keys' entries as mappings, not bare lists)."""
  if isinstance(value, tuple) and value and all(isinstance(v, tuple) and hasattr(v, "_asdict") for v in value):
    return [entry._asdict() for entry in value]  # kd_teachers, dataset_mixture
  return value
