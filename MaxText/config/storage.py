"""One path layer for local folders and cloud buckets (gs://, s3://): every file a job reads or writes
goes through these functions, so a path key takes either kind with the same checks.

Local paths use the operating system directly (absolute paths, atomic renames); URLs go through
`etils.epath`, which speaks to fsspec's gcsfs / s3fs. Orbax and tensorstore take URLs themselves.
Object stores differ from folders in three ways this module hides: a folder exists once something
is under it, an object is written whole (so `write_text_atomic` needs no temporary), and nothing can
be appended to (callers rewrite small files whole). ArrayRecord's reader and writer, safetensors and
memory-mapped GGUF files open local files only: `local_copy` and `LocalStaging` bridge them.
"""

from __future__ import annotations

import fnmatch
import functools
import glob as local_glob
import hashlib
import logging
import os
import posixpath
import re
import socket
import tempfile
import threading
import urllib.parse

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# URL scheme -> the fsspec package epath needs for it (installed with this project: gcsfs)
BACKENDS = {"gs": "gcsfs", "s3": "s3fs"}


@functools.cache
def fresh_listings() -> None:
  """fsspec caches folder listings per process; Orbax and tensorstore write objects behind its back, so a
  cached listing would hide a new checkpoint step. Listings are read fresh instead (they are few).

  Called before this module's first URL and by the modules that bring Orbax in (fsspec's import takes
  longer than reading a config: a job whose paths are all local, or whose config is wrong, never pays it)."""
  import fsspec

  for url_scheme in BACKENDS:
    fsspec.config.conf.setdefault(url_scheme, {}).setdefault("use_listings_cache", False)


def scheme(path: str) -> str | None:
  match = _SCHEME.match(path.strip())
  return match.group(1) if match else None


def is_remote(path: str) -> bool:
  return scheme(path) is not None


def _epath(path: str):
  from etils import epath

  fresh_listings()
  return epath.Path(path)


def absolute(path: str) -> str:
  """The path as written into manifests and saved configs: URLs unchanged, local paths absolute."""
  return path if is_remote(path) else os.path.abspath(path)


def join(path: str, *names: str) -> str:
  return posixpath.join(path, *names) if is_remote(path) else os.path.join(path, *names)


def dirname(path: str) -> str:
  return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def basename(path: str) -> str:
  return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def exists(path: str) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return _epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def listdir(path: str) -> list[str]:
  """Names directly under a folder (sorted)."""
  if is_remote(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def getsize(path: str) -> int:
  return _epath(path).stat().length if is_remote(path) else os.path.getsize(path)


def makedirs(path: str) -> None:
  if is_remote(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def open_file(path: str, mode: str = "r", encoding: str | None = "utf-8"):
  """A file object; binary modes ignore `encoding`. Remote files cannot be opened for appending."""
  if "b" in mode:
    return _epath(path).open(mode) if is_remote(path) else open(path, mode)  # noqa: SIM115
  return _epath(path).open(mode, encoding=encoding) if is_remote(path) else open(path, mode, encoding=encoding)  # noqa: SIM115


def read_text(path: str) -> str:
  with open_file(path) as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def write_text_atomic(path: str, text: str) -> None:
  """Readers see the old or the new file, never half of one: a local temporary renamed into place;
  an object upload, which becomes visible whole."""
  if is_remote(path):
    _epath(path).write_text(text)
    return
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def write_bytes(path: str, data: bytes) -> None:
  if is_remote(path):
    _epath(path).write_bytes(data)
  else:
    with open(path, "wb") as f:
      f.write(data)


def copy(source: str, destination: str) -> None:
  _epath(source).copy(_epath(destination), overwrite=True)


def rename(source: str, destination: str) -> None:
  """A local rename is atomic; a remote one copies then deletes (use it only where a crash is harmless)."""
  if is_remote(source):
    _epath(source).rename(_epath(destination))
  else:
    os.replace(source, destination)


def glob(pattern: str) -> list[str]:
  """Sorted matches of a glob (`*`, `?`, `[...]` in any path component)."""
  if not is_remote(pattern):
    return sorted(local_glob.glob(pattern))
  prefix = pattern.split("://", 1)[0] + "://"
  parts = pattern[len(prefix) :].split("/")
  first_wild = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
  if first_wild == len(parts):
    return [pattern] if exists(pattern) else []
  root = prefix + "/".join(parts[:first_wild])
  rest = "/".join(parts[first_wild:])
  return sorted(str(p) for p in _epath(root).glob(rest) if fnmatch.fnmatchcase(str(p), pattern))


# Where each scheme's client connects unless an emulator or endpoint variable says otherwise.
_ENDPOINTS = {
  "gs": ("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com"),
  "s3": ("AWS_ENDPOINT_URL", "https://s3.amazonaws.com"),
}
PROBE_SECONDS = 10.0


def bucket_of(url: str) -> str:
  url_scheme, rest = url.split("://", 1)
  return f"{url_scheme}://{rest.split('/', 1)[0]}"


def _endpoint(url_scheme: str) -> tuple[str, int]:
  variable, default = _ENDPOINTS[url_scheme]
  url = os.environ.get(variable) or default
  if "://" not in url:  # gcsfs takes an emulator host without a scheme as http://
    url = f"http://{url}"
  parsed = urllib.parse.urlsplit(url)
  return parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)


def _probe(bucket: str) -> str | None:
  """Why `bucket` cannot be used, or None. The endpoint is connected to first, with a timeout: the
  clients retry an unreachable host with backoff for a minute or more, logging each try."""
  if not any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
    host, port = _endpoint(scheme(bucket))
    try:
      socket.create_connection((host, port), timeout=PROBE_SECONDS / 2).close()
    except OSError as e:
      return f"cannot reach the bucket {bucket!r}: {host}:{port} does not answer ({e.strerror or e})"
  quiet = logging.getLogger(BACKENDS[scheme(bucket)])
  level = quiet.level
  quiet.setLevel(logging.CRITICAL)  # its retry and credential records: the one line below says what matters
  try:
    found = exists(bucket)
  except Exception as e:  # noqa: BLE001 - network, credentials: whatever the client raises, in one line
    lines = str(e).strip().splitlines() or [""]
    return f"cannot reach the bucket {bucket!r} ({type(e).__name__}: {lines[0][:200]})"
  finally:
    quiet.setLevel(level)
  return None if found else f"the bucket {bucket!r} does not exist or cannot be read"


@functools.cache
def probe_bucket(bucket: str) -> str | None:
  """`_probe` within PROBE_SECONDS (a slow name lookup or a client stuck in its retries counts as no
  answer), once per bucket and process."""
  answer: list[str | None] = []
  worker = threading.Thread(target=lambda: answer.append(_probe(bucket)), daemon=True)
  worker.start()
  worker.join(PROBE_SECONDS)
  if not answer:
    return f"cannot reach the bucket {bucket!r}: no answer within {PROBE_SECONDS:g} s"
  return answer[0]


def _staging_root() -> str:
  return os.environ.get("MAXTEXT_STAGING_DIR") or os.path.join(tempfile.gettempdir(), "maxtext-staging")


def local_copy(path: str) -> str:
  """A local file with the contents of `path` (itself when local). A remote object is downloaded once
  into a staging folder (MAXTEXT_STAGING_DIR, else the temp folder), keyed by its URL and size, so a
  rerun or a second reader of the same object reuses the download."""
  if not is_remote(path):
    return path
  size = getsize(path)
  key = hashlib.sha256(f"{path}\0{size}".encode()).hexdigest()[:16]
  local = os.path.join(_staging_root(), key, basename(path))
  if os.path.isfile(local) and os.path.getsize(local) == size:
    return local
  os.makedirs(os.path.dirname(local), exist_ok=True)
  with open_file(path, "rb") as src, open(local + ".part", "wb") as dst:
    while chunk := src.read(1 << 24):
      dst.write(chunk)
  os.replace(local + ".part", local)
  return local


class LocalStaging:
  """A local file (`.local`) that becomes `path` whole on `commit()`, for writers that open local files
  only (ArrayRecord, safetensors, Parquet): `path.tmp` renamed into place, or a staged file uploaded."""

  def __init__(self, path: str):
    self.path = path
    if is_remote(path):
      folder = tempfile.mkdtemp(prefix="upload-", dir=_ensure(_staging_root()))
      self.local = os.path.join(folder, basename(path))
    else:
      self.local = path + ".tmp"

  def commit(self) -> None:
    if not is_remote(self.path):
      os.replace(self.local, self.path)
      return
    copy(self.local, self.path)
    os.remove(self.local)
    os.rmdir(os.path.dirname(self.local))


def _ensure(folder: str) -> str:
  os.makedirs(folder, exist_ok=True)
  return folder
