"""The run's configuration: yml chain + preset + `key=value` -> one validated, frozen Config.

`load` reads and checks keys without touching any user file (for a gs:// or s3:// path it asks once whether
the bucket answers); the checks that read files (teacher folder, offline cache) are the separate pre-flight
step in `MaxText.training.preflight`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from MaxText.config.checks import validate_values
from MaxText.config.errors import ConfigError, UserError, silence_async_leftovers
from MaxText.config.kd_checks import validate_kd
from MaxText.config.loader import Config, merged_values, typed_names
from MaxText.config.paths import check_buckets
from MaxText.config.upstream import as_typed

__all__ = ["Config", "ConfigError", "UserError", "silence_async_leftovers", "load", "load_dict"]


def load(argv: Sequence[str], overrides: dict[str, Any] | None = None) -> Any:
  """A checked Config from `[config.yml, key=value, ...]` (and library `overrides`, applied last)."""
  try:
    values = merged_values(argv, overrides)
    validate_values(values)
    validate_kd(values)
  except ConfigError as error:
    reworded = as_typed(error, typed_names(argv))
    if reworded is error:
      raise
    raise reworded from None  # a user error: one line, naming the key as it was written
  check_buckets(values)  # last: the only check that may wait on the network
  return Config(**values)


def load_dict(overrides: dict[str, Any]) -> Any:
  """A checked Config from base.yml + preset + overrides, for tests and library use."""
  return load(["base.yml"], overrides)
