"""What the list keys (`kd_teachers`, `dataset_mixture`) share: a list of named, weighted mappings."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from MaxText.config.errors import ConfigError


def check_fields(where: str, raw: Any, fields: tuple[str, ...], example: str) -> None:
  """One entry is a mapping of known fields."""
  if not isinstance(raw, dict):
    raise ConfigError(f"{where}: expected a mapping like {example}, got {raw!r}")
  unknown = sorted(set(raw) - set(fields))
  if unknown:
    raise ConfigError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(fields)})")


def check_name(where: str, name: str) -> str:
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
    raise ConfigError(f"{where}.name: {name!r} must be letters, digits, '_', '.' or '-' (it names metrics)")
  return name


def positive_weight(where: str, raw: Any) -> float:
  """A weight > 0 (a number, or its text from upstream's 'files,weight' form)."""
  if isinstance(raw, str):
    try:
      raw = float(raw)
    except ValueError:
      raise ConfigError(f"{where}.weight: expected a number > 0, got {raw!r}") from None
  if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not raw > 0:
    raise ConfigError(f"{where}.weight: expected a number > 0, got {raw!r}")
  return float(raw)


def parse_entries(key: str, value: Any, spec_type: type, parse_entry: Callable[[int, Any], Any], expected: str):
  """The checked entries of a list key: each mapping parsed by `parse_entry(index, raw)`, already-parsed
  entries (`spec_type`) passed through; the names must differ (they tell the metrics apart)."""
  if isinstance(value, str) and not value.strip():
    return ()
  if not isinstance(value, (list, tuple)):
    raise ConfigError(f"{key}: expected a list of {expected}, got {value!r}")
  specs = tuple(v if isinstance(v, spec_type) else parse_entry(i, v) for i, v in enumerate(value))
  names = [spec.name for spec in specs]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ConfigError(f"{key}: the name {repeated[0]!r} is used twice (names tell the metrics apart)")
  return specs
