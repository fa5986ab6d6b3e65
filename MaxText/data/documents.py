"""The documents of a data set, read lazily: random access by document index without holding the corpus.

A document is a text file (dataset_type=text), a JSONL line, a Parquet or Arrow row (jsonl / parquet /
arrow: the `data_column` field), or an ArrayRecord record (pre-tokenized). Opening a source reads only what locates
documents: JSONL line offsets (one pass over the bytes, 8 bytes kept per document), Parquet row-group
sizes, ArrayRecord record counts; a document's bytes are read when the pipeline asks for it, usually in
a Grain worker process. Hosts split the work by file when there are at least as many files as hosts,
else by document (every host opens every file and keeps every `count`-th document).

Parquet is random access by row group: a document read decodes its row group (one is cached per
process), so a shuffled read of a large Parquet corpus decodes far more than it uses. Corpora read many
times are best tokenized once with MaxText/pretokenize.py and read as ArrayRecord.
"""

from __future__ import annotations

import array
import bisect
import json
import os
import threading

import numpy as np

from MaxText.config import storage
from MaxText.config.errors import BadInputError, MissingFieldError
from MaxText.data import array_records
from MaxText.data.text_files import read_arrow, read_text_file


def _jsonl_offsets(path: str) -> np.ndarray:
  """Byte offsets of the non-blank lines of a JSONL file (one buffered pass; lines are not parsed)."""
  starts, position = array.array("q"), 0  # 8 bytes per document even while indexing
  with storage.open_file(path, "rb") as f:
    for line in f:
      if line.strip():
        starts.append(position)
      position += len(line)
  return np.frombuffer(starts, np.int64) if starts else np.zeros(0, np.int64)


class DocumentFiles:
  """Documents spread over files: per-file counts, a global index, this host's share."""

  key = "dataset_path"

  def __init__(self, files: list[str], process_index: int = 0, process_count: int = 1):
    by_file = len(files) >= process_count
    self.files = files[process_index::process_count] if by_file else list(files)
    self.file_numbers = list(range(len(files)))[process_index::process_count] if by_file else list(range(len(files)))
    counts = [self._count(i) for i in range(len(self.files))]
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.host_stride = (1, 0) if by_file else (process_count, process_index)
    self.holds_every_file = len(self.files) == len(files)

  def _count(self, file_index: int) -> int:
    raise NotImplementedError

  def read(self, file_index: int, local_index: int):
    raise NotImplementedError

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: int):
    file_index = bisect.bisect_right(self._starts, index) - 1
    return self.read(file_index, int(index - self._starts[file_index]))

  def held_out(self, eval_fraction: float, seed: int) -> np.ndarray:
    """Eval marks, a fixed draw per file (so every host, whatever files it reads, agrees on them)."""
    marks = [
      np.random.default_rng([seed, self.file_numbers[f]]).random(int(self._starts[f + 1] - self._starts[f]))
      for f in range(len(self.files))
    ]
    is_eval = np.concatenate(marks) < eval_fraction if marks else np.zeros(0, bool)
    # the small-data-set fallback needs every mark; hosts reading disjoint files each see only theirs
    return _at_least_one(is_eval, eval_fraction) if self.holds_every_file else is_eval

  def __repr__(self) -> str:  # Grain names its sources in errors and debug lines
    return f"{type(self).__name__}({len(self.files)} files, {len(self)} documents)"


class TextFiles(DocumentFiles):
  def _count(self, file_index: int) -> int:
    return 1

  def read(self, file_index: int, local_index: int) -> str:
    return read_text_file(self.files[file_index])


class JsonlRecords(DocumentFiles):
  def __init__(self, files: list[str], column: str, key: str = "data_column", **host):
    self.column, self.column_key, self._offsets = column, key, []
    self._local = threading.local()
    super().__init__(files, **host)

  def _count(self, file_index: int) -> int:
    self._offsets.append(_jsonl_offsets(self.files[file_index]))
    if len(self._offsets[-1]):
      self.read(file_index, 0)  # a wrong data_column or a non-JSON file is named now, not mid-run
    return len(self._offsets[-1])

  def __getstate__(self):  # open file handles stay in the process that opened them
    return {k: v for k, v in self.__dict__.items() if k != "_local"}

  def __setstate__(self, state):
    self.__dict__.update(state, _local=threading.local())

  def _handle(self, file_index: int):
    """An open file per thread (Grain reads with several; a seek must not move another's position) and
    per process (a forked worker must not share its parent's file offsets)."""
    local = self._local
    if getattr(local, "pid", None) != os.getpid():
      local.pid, local.handles = os.getpid(), {}
    if file_index not in local.handles:
      local.handles[file_index] = storage.open_file(self.files[file_index], "rb")
    return local.handles[file_index]

  def read(self, file_index: int, local_index: int) -> str:
    f = self._handle(file_index)
    f.seek(int(self._offsets[file_index][local_index]))
    line = f.readline()
    where = lambda: f"{self.files[file_index]}:{self._line_number(file_index, local_index)}"  # errors only
    try:
      record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise BadInputError(f"{self.key}: {where()} is not valid JSON") from None
    if not isinstance(record, dict) or self.column not in record:
      raise MissingFieldError(f"{self.column_key}: {where()} has no field {self.column!r}")
    value = record[self.column]
    return value if isinstance(value, str) else _as_text(value, where(), self.column_key, self.column)

  def _line_number(self, file_index: int, local_index: int) -> int:
    """Counted only for an error message: the offsets skip blank lines, so they are not line numbers."""
    with storage.open_file(self.files[file_index], "rb") as f:
      return f.read(int(self._offsets[file_index][local_index])).count(b"\n") + 1


class ParquetRows(DocumentFiles):
  def __init__(self, files: list[str], column: str, key: str = "data_column", **host):
    self.column, self.column_key, self._row_groups = column, key, []
    super().__init__(files, **host)
    self._cached: tuple[tuple[int, int], list] | None = None

  def _count(self, file_index: int) -> int:
    import pyarrow.parquet as pq

    path = self.files[file_index]
    try:
      with storage.open_file(path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    except (OSError, ValueError) as e:
      raise BadInputError(f"{self.key}: cannot read parquet file {path!r}: {e}") from None
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if self.column not in names:
      raise MissingFieldError(f"{self.column_key}: parquet file {path!r} has no column {self.column!r} (has {names})")
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    self._row_groups.append(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
    return int(self._row_groups[-1][-1])

  def __getstate__(self):
    return {**self.__dict__, "_cached": None}

  def read(self, file_index: int, local_index: int) -> str:
    starts = self._row_groups[file_index]
    group = bisect.bisect_right(starts, local_index) - 1
    cached = self._cached  # one read of the shared slot: another thread may replace it meanwhile
    if cached is None or cached[0] != (file_index, group):
      import pyarrow.parquet as pq

      with storage.open_file(self.files[file_index], "rb") as f:
        table = pq.ParquetFile(f).read_row_group(group, columns=[self.column])
      cached = self._cached = ((file_index, group), table.column(self.column).to_pylist())
    where = f"parquet file {self.files[file_index]!r} row {local_index}"
    return _as_text(cached[1][local_index - int(starts[group])], where, self.column_key, self.column)


class ArrowRows(DocumentFiles):
  """Rows of Arrow IPC files (as Hugging Face `datasets` saves them). A file is read whole on first use and
  one is cached per process: fine for conversation sets; a large corpus is better as Parquet or pretokenized."""

  def __init__(self, files: list[str], column: str, key: str = "data_column", **host):
    self.column, self.column_key = column, key
    self._cached: tuple[int, list] | None = None
    super().__init__(files, **host)

  def _count(self, file_index: int) -> int:
    path = self.files[file_index]
    table = read_arrow(path, self.key)
    if self.column not in table.column_names:
      raise MissingFieldError(f"{self.column_key}: arrow file {path!r} has no column {self.column!r}")
    return table.num_rows

  def __getstate__(self):
    return {**self.__dict__, "_cached": None}

  def read(self, file_index: int, local_index: int) -> str:
    cached = self._cached
    if cached is None or cached[0] != file_index:
      table = read_arrow(self.files[file_index], self.key)
      cached = self._cached = (file_index, table.column(self.column).to_pylist())
    where = f"arrow file {self.files[file_index]!r} row {local_index}"
    return _as_text(cached[1][local_index], where, self.column_key, self.column)


def _as_text(value, where: str, key: str, column: str) -> str:
  if not isinstance(value, str):
    kind = "null" if value is None else f"a {type(value).__name__}"
    raise BadInputError(f"{key}: {where} field {column!r} is {kind}, not text")
  return value


class InMemoryDocuments:
  """Documents already in memory (SFT examples, or texts a test reads eagerly), one file's worth."""

  def __init__(self, documents: list, process_index: int = 0, process_count: int = 1):
    self.documents = documents
    self.host_stride = (process_count, process_index)

  def __len__(self) -> int:
    return len(self.documents)

  def __getitem__(self, index: int):
    return self.documents[index]

  def held_out(self, eval_fraction: float, seed: int) -> np.ndarray:
    return _at_least_one(np.random.default_rng([seed, 0]).random(len(self.documents)) < eval_fraction, eval_fraction)


def _at_least_one(is_eval: np.ndarray, eval_fraction: float) -> np.ndarray:
  if eval_fraction > 0 and len(is_eval) > 1 and not is_eval.any():
    is_eval[-1] = True  # a small data set still gets an eval document
  return is_eval


class ArrayRecordDocuments(DocumentFiles):
  """Pre-tokenized documents (int32 token ids per record), e.g. from MaxText/pretokenize.py."""

  def __init__(self, files: list[str], **host):
    self._sources = []
    super().__init__(files, **host)

  def _count(self, file_index: int) -> int:
    self._sources.append(array_records.open_records([self.files[file_index]], self.key))
    return len(self._sources[-1])

  def read(self, file_index: int, local_index: int) -> np.ndarray:
    return np.frombuffer(self._sources[file_index][local_index], dtype=np.int32)
