"""ArrayRecord files read through Grain, with a damaged or foreign file reported as a one-line user error.

Riegeli (under ArrayRecord) checksums its chunks: a flipped bit or an overwritten chunk fails the
read. That failure, and a file that is not ArrayRecord at all, become a `BadInputError` naming the
key and the file instead of a RuntimeError from inside a Grain thread.
"""

from __future__ import annotations

import bisect

import grain

from MaxText.config import storage
from MaxText.config.errors import BadInputError

storage.fresh_listings()  # before Orbax / Grain open any URL themselves


class CheckedRecords:
  """A random-access source over ArrayRecord files (what grain.MapDataset.source takes)."""

  def __init__(self, files: list[str], key: str):
    self._files, self._key = list(files), key
    self._sources, self._starts, total = [], [], 0
    for path in self._files:
      try:
        # ArrayRecord's reader opens local files only: a file in a bucket is read from a local copy
        source = grain.sources.ArrayRecordDataSource([storage.local_copy(path)])
      except RuntimeError as e:  # e.g. a text file: "ArrayRecord file should be at least 64KB big"
        raise BadInputError(f"{key}: {path!r} is not an ArrayRecord file ({e})") from None
      self._sources.append(source)
      self._starts.append(total)
      total += len(source)
    self._len = total

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> bytes:
    file_index = bisect.bisect_right(self._starts, index) - 1
    try:
      return self._sources[file_index][index - self._starts[file_index]]
    except RuntimeError as e:  # "Corrupted Riegeli/records file: chunk data hash mismatch ..."
      raise BadInputError(
        f"{self._key}: {self._files[file_index]!r} is damaged ({str(e).splitlines()[0][:160]})"
      ) from None

  def __repr__(self) -> str:  # Grain names its sources in errors and debug lines
    return f"CheckedRecords({len(self._files)} files, {self._len} records)"


def open_records(files: list[str], key: str) -> CheckedRecords:
  return CheckedRecords(files, key)


def first_damaged(files: list[str], chunk_records: int = 1024) -> tuple[int, str] | None:
  """(index in `files`, Riegeli's reason) of the first file with a chunk that fails its hash (every record
  is read once, in C++, a slice at a time), or None when all read back whole."""
  from array_record.python import array_record_module

  for index, path in enumerate(files):
    try:
      reader = array_record_module.ArrayRecordReader(storage.local_copy(path))
      count = reader.num_records()
      for begin in range(0, count, chunk_records):
        reader.read(begin, min(count, begin + chunk_records))
      reader.close()
    except RuntimeError as e:  # "Corrupted Riegeli/records file: chunk data hash mismatch ..."
      return index, str(e).splitlines()[0][:160]
  return None
