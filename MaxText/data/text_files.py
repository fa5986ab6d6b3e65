"""Reading the files a data set is made of: UTF-8 text (a binary file is refused by name), JSONL records, Parquet,
Arrow."""

from __future__ import annotations

import json

from MaxText.config import storage
from MaxText.config.errors import BadInputError, MissingFieldError, MissingFileError


def read_text_file(path: str) -> str:
  """A UTF-8 text file; a binary file (NUL bytes, invalid UTF-8) is refused rather than trained on as noise."""
  try:
    with storage.open_file(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise MissingFileError(f"dataset_path: cannot read {path!r}: {e.strerror}") from None
  nul = data.find(b"\x00")
  if nul >= 0:
    raise BadInputError(f"dataset_path: {path!r} is not text (it holds a NUL byte at offset {nul})")
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise BadInputError(f"dataset_path: {path!r} is not UTF-8 text (invalid byte at offset {e.start})") from None


def read_parquet(path: str, key: str):
  """A Parquet file as a pyarrow Table (from a local file or a bucket)."""
  import pyarrow.parquet as pq

  try:
    with storage.open_file(path, "rb") as f:
      return pq.read_table(f)
  except (OSError, ValueError) as e:
    raise MissingFileError(f"{key}: cannot read parquet file {path!r}: {e}") from None


def read_arrow(path: str, key: str):
  """An Arrow IPC file as a pyarrow Table: the random-access format, or the stream format that Hugging Face
  `datasets` writes (`save_to_disk`, its cache). The file is read whole."""
  import pyarrow as pa

  try:
    with storage.open_file(path, "rb") as f:
      data = pa.py_buffer(f.read())
    try:
      return pa.ipc.open_file(data).read_all()
    except pa.ArrowInvalid:
      return pa.ipc.open_stream(data).read_all()
  except (OSError, pa.ArrowInvalid) as e:
    raise MissingFileError(f"{key}: cannot read arrow file {path!r}: {e}") from None


def jsonl_fields(path: str, column: str, key: str):
  """(where, value of `column`) per non-empty line of a JSONL file; errors name `key` and the line."""
  for line_number, line in enumerate(read_text_file(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      raise BadInputError(f"dataset_path: {path}:{line_number} is not valid JSON") from None
    if not isinstance(record, dict) or column not in record:
      raise MissingFieldError(f"{key}: {path}:{line_number} has no field {column!r}")
    yield f"{path}:{line_number}", record[column]
