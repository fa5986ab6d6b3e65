"""MaxText's config module name: a facade over `MaxText.config` for users and scripts that know it.

`initialize(argv)` is what MaxText's returns: a checked, frozen Config; here it also runs the
pre-flight file checks (teacher folder, offline cache), so a config it returns is ready to train.
Library code that must not touch the files (ahead-of-time compilation) uses `MaxText.config.load`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from MaxText import config as _config
from MaxText.config import Config, ConfigError  # noqa: F401
from MaxText.config.loader import defaults, help_text, key_comments, non_default_keys, parse_overrides  # noqa: F401
from MaxText.config.views import (  # noqa: F401
  MODEL_KEYS,
  feature_alignment,
  feature_layer_pairs,
  teacher_config,
  uses_features,
)
from MaxText.training import preflight


def initialize(argv: Sequence[str], overrides: dict[str, Any] | None = None) -> Any:
  """`argv` as MaxText takes it: [config.yml, key=value, ...] (the script name already dropped).

  `overrides` (library use) are applied like command-line values, after `argv`'s.
  """
  config = _config.load(argv, overrides)
  preflight.run(config)
  return config


def from_dict(overrides: dict[str, Any]) -> Any:
  """A Config from base.yml + preset + overrides, for tests and library use (pre-flight checked)."""
  return initialize(["base.yml"], overrides)
