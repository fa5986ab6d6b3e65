"""Checks of the paths a run reads and writes: local paths only (for now), and writable folders that
hold nothing a job did not write itself, so that no job ever overwrites a user's files."""

from __future__ import annotations

import fnmatch
import os
import re

from MaxText.config.errors import ConfigError

# Every key that names a file or folder; a cloud URL in one of them is refused until cloud I/O exists.
PATH_KEYS = (
  "base_output_directory",
  "jax_cache_dir",
  "dataset_path",
  "tokenizer_path",
  "load_parameters_path",
  "kd_teacher_parameters_path",
  "kd_offline_data_dir",
  "kd_offline_output_dir",
  "prune_output_dir",
  "decode_input_path",
  "decode_output_path",
  "generation_output_dir",
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def check_local(key: str, value: str) -> None:
  """A URL (gs://, s3://, ...) would silently become a local folder named 'gs:': refuse it by name."""
  match = _SCHEME.match(value.strip())
  if match:
    raise ConfigError(
      f"{key}: {value!r} is a {match.group(1)}:// path; only local paths are supported (copy it to a local folder)"
    )


def check_output_folder(key: str, path: str, own_files: tuple[str, ...]) -> None:
  """`path` may be missing (it is created) or a writable folder holding only names matching `own_files`."""
  if not os.path.exists(path):
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
      raise ConfigError(f"{key}: {path!r} cannot be created ({parent!r} is not a writable folder)")
    return
  if not os.path.isdir(path):
    raise ConfigError(f"{key}: {path!r} is a file, not a folder")
  if not os.access(path, os.W_OK | os.X_OK):
    raise ConfigError(f"{key}: {path!r} is not writable")
  foreign = sorted(n for n in os.listdir(path) if not any(fnmatch.fnmatch(n, p) for p in own_files))
  if foreign:
    raise ConfigError(
      f"{key}: {path!r} holds {foreign[0]!r}, which this job did not write; use an empty or new folder "
      "(nothing was written)"
    )
