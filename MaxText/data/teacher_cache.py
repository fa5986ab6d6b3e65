"""The offline-distillation cache: record layouts, manifest, the checks against a run, and the reader.

Two record formats, named by the manifest's format_version: 3 with `record_format: compact` (the
default, about a third of the bytes; data/compact_records.py), and 2, the float layout below, which
`kd_offline_format=float` still writes and every cache saved before format 3 has.

Format 2: one record per packed sequence, fixed layout (sizes from the manifest), little-endian:
  inputs, targets, positions, input and target segmentation   int32 [L] each (SFT: targets outside
                                                             the assistant's turns have segmentation 0)
  top-k raw teacher logits                  bfloat16 or float32 [L, k] (largest first)
  their token ids                           int32 [L, k]
  teacher log-sum-exp of logits / T         float32 [n_T, L], T = 1 first, then kd_offline_temperatures
Storing the full-vocabulary log-sum-exp makes the top-k teacher probabilities exact and gives the
pruned tail mass (1 - their sum), which renormalised-only caches lose.

Shards are ArrayRecord files `shard-<process>-<index>.array_record`, one set per host; each host
keeps `progress-<process>.json` (finished shards and the data iterator state after each) so a rerun
resumes, and process 0 writes `manifest.json` when every host is done.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any

import ml_dtypes
import numpy as np

from MaxText.config import storage
from MaxText.config.errors import BadInputError, UserError
from MaxText.config.views import kd_vocab
from MaxText.data import array_records
from MaxText.data.compact_records import CompactLayout, RecordDamaged, ValueCode

FLOAT_FORMAT_VERSION = 2  # 2: targets_segmentation stored (1 assumed it equal to the inputs')
COMPACT_FORMAT_VERSION = 3
MANIFEST = "manifest.json"
CACHE_FILES = ("shard-*.array_record", "progress-*.json", "manifest.json", "*.tmp")  # all the save job writes
VALUE_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
TOKEN_FIELDS = ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_segmentation")


class CacheError(UserError, ValueError):
  """A cache folder that is missing, incomplete, corrupt or made for another run."""


@dataclasses.dataclass(frozen=True)
class RecordLayout:
  length: int
  top_k: int
  num_temperatures: int
  value_dtype: str

  def fields(self) -> list[tuple[str, Any, tuple[int, ...]]]:
    length, k = self.length, self.top_k
    return [
      *[(name, np.int32, (length,)) for name in TOKEN_FIELDS],
      ("teacher_values", VALUE_DTYPES[self.value_dtype], (length, k)),
      ("teacher_ids", np.int32, (length, k)),
      ("teacher_lse", np.float32, (self.num_temperatures, length)),
    ]

  @property
  def record_bytes(self) -> int:
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, dtype, shape in self.fields())

  def encode(self, row: dict[str, np.ndarray]) -> bytes:
    return b"".join(np.ascontiguousarray(row[name], dtype).tobytes() for name, dtype, _ in self.fields())

  def decode(self, record: bytes) -> dict[str, np.ndarray]:
    if len(record) != self.record_bytes:
      raise CacheError(
        f"kd_offline_data_dir: a record has {len(record)} bytes, the manifest's layout {self.record_bytes}"
      )
    row, offset = {}, 0
    for name, dtype, shape in self.fields():
      count = int(np.prod(shape))
      row[name] = np.frombuffer(record, dtype, count, offset).reshape(shape)
      offset += count * np.dtype(dtype).itemsize
    return row


def layout_of(manifest: dict) -> RecordLayout | CompactLayout:
  length, k, temps = manifest["max_target_length"], manifest["top_k"], manifest["temperatures"]
  if manifest["format_version"] == COMPACT_FORMAT_VERSION:
    code = ValueCode(**manifest["value_code"])
    return CompactLayout(length, k, len(temps), manifest["vocab_size"], tuple(float(t) for t in temps), code)
  return RecordLayout(length, k, len(temps), manifest["logits_dtype"])


def format_spec(config) -> dict:
  """The manifest fields that name the record format `kd_offline_format` writes."""
  if config.kd_offline_format == "float":
    return {"format_version": FLOAT_FORMAT_VERSION, "logits_dtype": config.kd_offline_logits_dtype}
  code = ValueCode(bits=config.kd_offline_value_bits)
  return {
    "format_version": COMPACT_FORMAT_VERSION,
    "record_format": "compact",
    "value_code": {"bits": code.bits, "scale": code.scale, "range": code.range},
  }


def batch_value_dtype(format_version: int, logits_dtype: str = "float32"):
  """The dtype of `teacher_values` in the batches read from a cache (compact records decode to float32)."""
  return np.float32 if format_version == COMPACT_FORMAT_VERSION else VALUE_DTYPES[logits_dtype]


def temperatures(config) -> list[float]:
  """T = 1 always, then the listed extra temperatures (deduplicated, in order)."""
  listed = [float(t) for t in config.kd_offline_temperatures.split(",") if t.strip()]
  return list(dict.fromkeys([1.0, *listed]))


def tokenizer_fingerprint(config) -> str:
  """sha256 of the tokenizer file (the folder's tokenizer.json), or the byte tokenizer's name."""
  if config.tokenizer_type == "byte":
    return "byte"
  path = config.tokenizer_path
  if storage.isdir(path):
    path = storage.join(path, "tokenizer.json")
  with storage.open_file(path, "rb") as f:
    return f"{config.tokenizer_type}:sha256:{hashlib.sha256(f.read()).hexdigest()}"


def data_spec(config) -> dict:
  keys = ("dataset_type", "dataset_path", "data_column", "add_bos", "add_eos", "packing", "eval_fraction")
  keys += ("eval_dataset_path", "data_shuffle_seed", "data_shuffle_buffer_size", "per_device_batch_size", "steps")
  # the order in which the pipeline yields sequences (2: shuffled documents, split by document; 3: the same
  # with SFT conversations shuffled within one epoch, input_pipeline.shuffle_window)
  return {k: getattr(config, k) for k in keys} | {"pipeline_version": 3 if config.use_sft else 2}


def shard_name(process: int, index: int) -> str:
  return f"shard-{process:05d}-{index:05d}.array_record"


def progress_path(directory: str, process: int) -> str:
  return storage.join(directory, f"progress-{process:05d}.json")


def write_json_atomic(path: str, obj) -> None:
  """An interrupted write never leaves a half file behind (config/storage.py)."""
  storage.write_text_atomic(path, json.dumps(obj, indent=1))


_MANIFEST_KEYS = ("shards", "temperatures", "top_k", "vocab_size", "max_target_length")
_FORMAT_KEYS = {FLOAT_FORMAT_VERSION: ("logits_dtype",), COMPACT_FORMAT_VERSION: ("value_code",)}


def read_manifest(directory: str) -> dict:
  path = storage.join(directory, MANIFEST)
  if not storage.isfile(path):
    raise CacheError(
      f"kd_offline_data_dir: no {MANIFEST} in {directory!r} (an unfinished save? rerun save_top_k_teacher_logits.py)"
    )
  try:
    with storage.open_file(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CacheError(f"kd_offline_data_dir: {path!r} cannot be read ({e}); truncated?") from None
  version = manifest.get("format_version") if isinstance(manifest, dict) else None
  if version not in _FORMAT_KEYS:
    raise CacheError(
      f"kd_offline_data_dir: {path!r} has format_version {version}, this code reads {sorted(_FORMAT_KEYS)}; "
      "save the cache again"
    )
  missing = [k for k in (*_MANIFEST_KEYS, *_FORMAT_KEYS[version]) if k not in manifest]
  if missing:
    raise CacheError(f"kd_offline_data_dir: {path!r} lacks {missing[0]!r}; save the cache again")
  return manifest


def check_shards(directory: str, manifest: dict) -> None:
  """Every shard is there with the size the save job recorded (a truncated copy is caught here)."""
  for shard in manifest["shards"]:
    path = storage.join(directory, shard["file"])
    if not storage.isfile(path):
      raise CacheError(f"kd_offline_data_dir: shard {shard['file']} listed in the manifest is missing")
    size = storage.getsize(path)
    if size != shard["bytes"]:
      raise CacheError(
        f"kd_offline_data_dir: shard {shard['file']} has {size} bytes but the manifest records {shard['bytes']} "
        "(truncated or overwritten)"
      )


def check_against_run(manifest: dict, config) -> None:
  """The cache must have been made for this run's vocabulary, sequence length, k and tokenizer."""
  checks = [
    ("kd_vocab_size" if config.kd_vocab_size else "vocab_size", kd_vocab(config), manifest["vocab_size"]),
    ("max_target_length", config.max_target_length, manifest["max_target_length"]),
  ]
  if config.kd_top_k:
    checks.append(("kd_top_k", config.kd_top_k, manifest["top_k"]))
  for key, ours, cached in checks:
    if ours != cached:
      raise CacheError(
        f"{key}: the run has {ours} but the cache in {config.kd_offline_data_dir!r} was saved with {cached}"
      )
  fingerprint = tokenizer_fingerprint(config)
  if fingerprint != manifest["tokenizer_fingerprint"]:
    raise CacheError(
      f"tokenizer_path: the run's tokenizer ({fingerprint[:40]}) is not the one the cache in "
      f"{config.kd_offline_data_dir!r} was saved with ({manifest['tokenizer_fingerprint'][:40]})"
    )


def lse_index(temperatures: list[float], config) -> int | None:
  """Column of the run's constant kd_temperature among the cached ones; None when it must be estimated."""
  if config.kd_temperature_schedule != "constant":
    return None
  matches = [i for i, t in enumerate(temperatures) if abs(t - config.kd_temperature) <= 1e-6 * t]
  return matches[0] if matches else None


@dataclasses.dataclass(frozen=True)
class CacheView:
  """A checked cache as a run uses it."""

  directory: str
  temperatures: tuple[float, ...]  # T = 1 first
  lse_index: int | None  # column of the run's temperature; None = estimated from T = 1
  layout: RecordLayout
  shard_files: tuple[str, ...]


def open_for_run(config) -> CacheView:
  """Reads and checks the manifest and shards of `kd_offline_data_dir` against the run (one pass)."""
  directory = config.kd_offline_data_dir
  manifest = read_manifest(directory)
  check_shards(directory, manifest)
  check_against_run(manifest, config)
  temperatures = [float(t) for t in manifest["temperatures"]]
  index = lse_index(temperatures, config)
  if index is None and not (config.kd_offline_approximate_temperature or config.kd_use_hard_labels):
    constant = config.kd_temperature_schedule == "constant"
    wanted = config.kd_temperature if constant else f"a {config.kd_temperature_schedule} schedule"
    raise CacheError(
      f"kd_temperature: {wanted} is not among the cached temperatures {temperatures}; save it with "
      "kd_offline_temperatures or set kd_offline_approximate_temperature=true"
    )
  files = tuple(storage.join(directory, shard["file"]) for shard in manifest["shards"])
  return CacheView(directory, tuple(temperatures), index, layout_of(manifest), files)


def verify(cache: CacheView, process_index: int, process_count: int) -> None:
  """kd_offline_verify: every shard read back whole before training (each process reads its share, and
  all learn of a damaged one), instead of failing when training first reaches a damaged record, or never
  when a short run does not. Raises BadInputError naming the shard."""
  share = cache.shard_files[process_index::process_count]
  found = array_records.first_damaged(list(share))
  mine = -1 if found is None else process_index + found[0] * process_count
  failed_index = mine
  if process_count > 1:
    from jax.experimental import multihost_utils

    failed_index = int(max(multihost_utils.process_allgather(np.int64(mine))))
  if failed_index >= 0:
    reason = found[1] if failed_index == mine else "found by another process"
    raise BadInputError(
      f"kd_offline_data_dir: {cache.shard_files[failed_index]!r} is damaged ({reason}); save the cache again "
      "(kd_offline_verify read every shard before training)"
    )


def make_iterator(
  cache: CacheView, shuffle_seed: int, batch_size: int, process_index: int, process_count: int, workers: int = 0
):
  """Checkpointable iterator of per-process batches read from the cache: shuffled, sharded per host;
  records decoded (and batched) in `workers` Grain processes when > 0 (the order does not change)."""
  import grain

  ds = grain.MapDataset.source(array_records.open_records(list(cache.shard_files), "kd_offline_data_dir"))
  ds = ds.shuffle(seed=shuffle_seed)[process_index::process_count]
  ds = ds.repeat(None).map(functools.partial(_decode, cache.layout, cache.directory))
  ds = ds.to_iter_dataset().batch(batch_size, drop_remainder=True)
  if workers:
    from MaxText.data.input_pipeline import grain_flags_parsed

    grain_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=4))
  return iter(ds)


def _decode(layout, directory: str, record: bytes) -> dict:
  try:
    return layout.decode(record)
  except RecordDamaged as e:
    raise CacheError(f"kd_offline_data_dir: {directory!r}: {e}; save the cache again") from None
