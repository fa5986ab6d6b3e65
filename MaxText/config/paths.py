"""Checks of the paths a run reads and writes: local paths or cloud URLs the storage layer speaks
(config/storage.py), and writable folders that hold nothing a job did not write itself, so that no
job ever overwrites a user's files."""

from __future__ import annotations

import fnmatch
import importlib.util
import os

from MaxText.config import storage
from MaxText.config.errors import ConfigError

# Every key that names a file or folder: each takes a local path or a gs:// (s3://) URL.
PATH_KEYS = (
  "base_output_directory",
  "jax_cache_dir",
  "dataset_path",
  "eval_dataset_path",
  "tokenizer_path",
  "load_parameters_path",
  "load_full_state_path",
  "kd_teacher_parameters_path",
  "kd_offline_data_dir",
  "kd_offline_output_dir",
  "prune_output_dir",
  "decode_input_path",
  "decode_draft_parameters_path",
  "decode_output_path",
  "generation_output_dir",
  "pretokenize_output_dir",
)


def check_scheme(key: str, value: str) -> None:
  """A URL must name a scheme the storage layer speaks, with its client installed; anything else would
  fail deep inside a job (or silently become a local folder named 'ftp:')."""
  url_scheme = storage.scheme(value)
  if url_scheme is None:
    return
  backend = storage.BACKENDS.get(url_scheme)
  if backend is None:
    known = ", ".join(f"{s}://" for s in storage.BACKENDS)
    raise ConfigError(f"{key}: {value!r} is a {url_scheme}:// path; use a local path or one of {known}")
  if importlib.util.find_spec(backend) is None:
    raise ConfigError(f"{key}: {value!r} needs the {backend} package for {url_scheme}:// paths (pip install {backend})")


def check_reachable(key: str, value: str) -> None:
  """A URL's bucket answers (within storage.PROBE_SECONDS): a typo'd bucket, missing credentials and no
  network all fail here in one line, before any job starts (the clients would retry for minutes)."""
  if storage.is_remote(value):
    reason = storage.probe_bucket(storage.bucket_of(value))
    if reason is not None:
      raise ConfigError(f"{key}: {value!r}: {reason}")


def check_exists(key: str, value: str) -> None:
  """A file or folder a job reads (a local path, or an object or prefix in a bucket) is there."""
  if value and not storage.exists(value):
    raise ConfigError(f"{key}: {value!r} does not exist")


def check_buckets(values: dict) -> None:
  """check_reachable for every path key (each entry of a comma-separated list)."""
  for key in PATH_KEYS:
    for part in str(values.get(key) or "").split(","):
      check_reachable(key, part.strip())


def check_output_folder(key: str, path: str, own_files: tuple[str, ...]) -> None:
  """`path` may be missing (it is created) or a writable folder holding only names matching `own_files`."""
  if storage.is_remote(path):
    _check_remote_output(key, path)
  elif not os.path.exists(path):
    _check_creatable(key, path)
    return
  elif not os.path.isdir(path):
    raise ConfigError(f"{key}: {path!r} is a file, not a folder")
  elif not os.access(path, os.W_OK | os.X_OK):
    raise ConfigError(f"{key}: {path!r} is not writable")
  if not storage.isdir(path):
    return
  foreign = [n for n in storage.listdir(path) if not any(fnmatch.fnmatch(n, p) for p in own_files)]
  if foreign:
    raise ConfigError(
      f"{key}: {path!r} holds {foreign[0]!r}, which this job did not write; use an empty or new folder "
      "(nothing was written)"
    )


def _check_creatable(key: str, path: str) -> None:
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f"{key}: {path!r} cannot be created ({parent!r} is not a writable folder)")


def _check_remote_output(key: str, path: str) -> None:
  """A bucket cannot be probed for write access without writing: check that it answers and that the
  path is not an object."""
  check_reachable(key, path)
  if storage.isfile(path):
    raise ConfigError(f"{key}: {path!r} is a file, not a folder")
