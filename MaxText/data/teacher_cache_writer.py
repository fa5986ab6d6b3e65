"""Writing the offline-distillation cache: shards, per-host progress (the resume points) and the manifest.

The format itself (record layout, manifest fields) is in teacher_cache.py; this module only writes it.
"""

from __future__ import annotations

import json
import os
import queue
import threading

import jax
import numpy as np

from MaxText.config import storage
from MaxText.config.teachers import normalized_weights
from MaxText.config.views import kd_vocab
from MaxText.data import teacher_cache

# One record per chunk: cheap shuffled reads. zstd takes a compact record from 151.1 to 141.4 bytes/token
# for 0.01 ms more a read (float records: 547.7 -> 370.5 for 0.11 ms; benchmarks/compact_cache.py), but
# the float format stays as format 2 always wrote it.
_ARRAY_RECORD_OPTIONS = {2: "group_size:1,uncompressed", 3: "group_size:1,zstd:3"}


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in the order it fed them."""
  by_start = {s.index[0].start or 0: s for s in x.addressable_shards}
  return np.concatenate([np.asarray(by_start[start].data) for start in sorted(by_start)])


def cache_spec(config, teacher_fingerprint: str, local_batch: int) -> dict:
  """Everything that fixes the cache's contents; a resumed save must match it exactly."""
  return (
    _teachers_spec(config)
    | teacher_cache.format_spec(config)
    | {
      "top_k": config.kd_offline_top_k,
      "vocab_size": kd_vocab(config),
      "max_target_length": config.max_target_length,
      "temperatures": teacher_cache.temperatures(config),
      "teacher_fingerprint": teacher_fingerprint,
      "tokenizer_fingerprint": teacher_cache.tokenizer_fingerprint(config),
      "data": teacher_cache.data_spec(config),
      "process_count": jax.process_count(),
      "sequences_per_batch_per_process": local_batch,
      "batches_per_shard": config.kd_offline_batches_per_shard,
    }
  )


def _teachers_spec(config) -> dict:
  """Which teacher(s) the cache holds: a checkpoint, or an ensemble's checkpoints, weights and combination."""
  if not config.kd_teachers:
    return {"teacher_checkpoint": storage.absolute(config.kd_teacher_parameters_path)}
  return {
    "teacher_checkpoint": [storage.absolute(spec.parameters_path) for spec in config.kd_teachers],
    "ensemble": {
      "names": [spec.name for spec in config.kd_teachers],
      "weights": list(normalized_weights(config.kd_teachers)),
      "kd_ensemble": config.kd_ensemble,
    },
  }


class ShardWriter(threading.Thread):
  """Encodes and writes batches from a queue; closes a shard every `batches_per_shard` batches and
  records it (with the data iterator state after it) in this process's progress file."""

  def __init__(self, directory: str, layout, progress: dict, batches_per_shard: int):
    super().__init__(daemon=True)
    self.directory, self.layout, self.progress = directory, layout, progress
    self.format_version = progress["spec"]["format_version"]
    self.batches_per_shard = batches_per_shard
    self.queue: queue.Queue = queue.Queue(maxsize=4)
    self.error: BaseException | None = None
    self._writer, self._records, self._tokens, self._batches = None, 0, 0, 0

  def _open(self) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    self._file = teacher_cache.shard_name(jax.process_index(), len(self.progress["finished"]))
    # ArrayRecord writes local files only: a shard bound for a bucket is written locally and uploaded whole
    self._staging = storage.LocalStaging(storage.join(self.directory, self._file))
    self._writer = ArrayRecordWriter(self._staging.local, _ARRAY_RECORD_OPTIONS[self.format_version])
    self._records = self._tokens = self._batches = 0

  def _close(self, iterator_state) -> None:
    self._writer.close()
    size = os.path.getsize(self._staging.local)
    self._staging.commit()
    shard = {"file": self._file, "records": self._records, "tokens": self._tokens, "bytes": size}
    self.progress["finished"].append({**shard, "iterator_state": iterator_state})
    teacher_cache.write_json_atomic(teacher_cache.progress_path(self.directory, jax.process_index()), self.progress)
    self._writer = None

  def _write_batch(self, host_batch: dict, teacher_out) -> None:
    values, ids, lse = (local_rows(x) for x in teacher_out)
    for row in range(values.shape[0]):
      fields = {name: host_batch[name][row] for name in teacher_cache.TOKEN_FIELDS}
      fields.update(teacher_values=values[row], teacher_ids=ids[row], teacher_lse=lse[row])
      self._writer.write(self.layout.encode(fields))
    self._records += values.shape[0]
    self._tokens += int(np.count_nonzero(host_batch["targets_segmentation"]))

  def run(self) -> None:
    try:
      while (item := self.queue.get()) is not None:
        host_batch, teacher_out, iterator_state = item
        if self._writer is None:
          self._open()
        self._write_batch(host_batch, teacher_out)
        self._batches += 1
        if iterator_state is not None:  # the end of a shard, or of the stream
          self._close(iterator_state)
    except BaseException as e:  # handed to the main thread, which stops feeding
      self.error = e

  def put(self, item) -> None:
    if self.error is not None:
      raise self.error
    self.queue.put(item)


def read_progress(directory: str, spec: dict) -> dict:
  """This process's finished shards (a resume point), checked to belong to this very cache."""
  path = teacher_cache.progress_path(directory, jax.process_index())
  if not storage.isfile(path):
    # A finished cache always has every host's progress file: a manifest without ours is not this job's.
    if storage.isfile(storage.join(directory, teacher_cache.MANIFEST)):
      raise teacher_cache.CacheError(
        f"kd_offline_output_dir: {directory!r} holds a {teacher_cache.MANIFEST} without this host's progress "
        "file: not a cache this job wrote with this process count (nothing was written); use a new folder"
      )
    return {"spec": spec, "finished": []}
  try:
    with storage.open_file(path, encoding="utf-8") as f:
      progress = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise teacher_cache.CacheError(f"kd_offline_output_dir: {path!r} cannot be read ({e})") from None
  if not isinstance(progress, dict) or "spec" not in progress:
    raise teacher_cache.CacheError(f"kd_offline_output_dir: {path!r} is not a progress file of this job")
  if progress["spec"] != spec:
    changed = next(k for k in spec if progress["spec"].get(k) != spec[k])
    raise teacher_cache.CacheError(
      f"kd_offline_output_dir: {directory!r} holds a cache made with another {changed!r}; use a new folder"
    )
  return progress


def write_manifest(directory: str, spec: dict) -> dict:
  shards = []
  for process in range(jax.process_count()):
    with storage.open_file(teacher_cache.progress_path(directory, process), encoding="utf-8") as f:
      finished = json.load(f)["finished"]
    shards += [{k: v for k, v in s.items() if k != "iterator_state"} | {"process": process} for s in finished]
  manifest = {
    **spec,
    "shards": shards,
    "sequences": sum(s["records"] for s in shards),
    "tokens": sum(s["tokens"] for s in shards),
    "bytes": sum(s["bytes"] for s in shards),
  }
  teacher_cache.write_json_atomic(storage.join(directory, teacher_cache.MANIFEST), manifest)
  return manifest
