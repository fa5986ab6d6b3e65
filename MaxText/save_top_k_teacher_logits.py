"""Runs the teacher once over the training data stream and caches what offline distillation needs.

  python MaxText/save_top_k_teacher_logits.py base.yml kd_teacher_parameters_path=CKPT \
      kd_offline_output_dir=DIR kd_offline_top_k=64 kd_offline_temperatures=2.0 [steps=N per_device_batch_size=B ...]

It reads the same stream a training run of this config would (data keys, packing, shuffle seed): `steps`
batches of the global batch. Per sequence it stores tokens, targets, segmentation and positions, the
top-k raw teacher logits, their ids and the full-vocabulary log-sum-exp at T = 1 and each listed
temperature (format in offline_cache.py). A background thread writes, so the teacher never waits on
disk. A rerun resumes: finished shards are kept and the shard that was being written is rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import queue
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText import distillation, input_pipeline, max_utils, offline_cache, pyconfig, sharding  # noqa: E402
from MaxText import model as model_lib  # noqa: E402
from MaxText import offline_distillation as od  # noqa: E402
from MaxText.train import build_corpus, global_batch_size, maybe_initialize_distributed, to_global  # noqa: E402
from MaxText.train_step import run_decoder  # noqa: E402

_ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed"  # one record per chunk: cheap shuffled reads


def teacher_cache_step(graphdef, params, batch, top_k: int, temperatures: tuple, value_dtype, chunk_size: int):
  """[B, L, k] values and ids and [B, n_T, L] log-sum-exps, projecting chunk by chunk (no full logits)."""
  model = model_lib.bind(graphdef, params)
  hidden_BxLxD = run_decoder(model, batch).hidden_BxLxD
  batch_size, length, width = hidden_BxLxD.shape
  n = batch_size * length
  chunk = min(chunk_size, n)
  num_chunks = -(-n // chunk)
  hidden = jnp.pad(hidden_BxLxD.reshape(n, width), ((0, num_chunks * chunk - n), (0, 0)))
  w_DxV = model.output_matrix_DxV()

  def one_chunk(h_CxD):
    return od.cache_fields(max_utils.project_logits(h_CxD, w_DxV), top_k, temperatures, value_dtype)

  values, ids, lse = jax.lax.map(one_chunk, hidden.reshape(num_chunks, chunk, width))
  values, ids, lse = (x.reshape(num_chunks * chunk, *x.shape[2:])[:n] for x in (values, ids, lse))
  lse_BxTxL = jnp.swapaxes(lse.reshape(batch_size, length, -1), 1, 2)
  return values.reshape(batch_size, length, top_k), ids.reshape(batch_size, length, top_k), lse_BxTxL


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in the order it fed them."""
  by_start = {s.index[0].start or 0: s for s in x.addressable_shards}
  return np.concatenate([np.asarray(by_start[start].data) for start in sorted(by_start)])


def params_fingerprint(params) -> str:
  """sha256 over each tensor's path, shape, dtype, sum and sum of squares (computed on device, 6 digits)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  stats = jax.jit(lambda p: [(jnp.sum(x.astype(jnp.float32)), jnp.sum(jnp.square(x.astype(jnp.float32)))) for x in p])(
    [x for _, x in leaves]
  )
  text = json.dumps(
    [
      [jax.tree_util.keystr(path), list(x.shape), str(x.dtype), f"{float(s):.6e}", f"{float(q):.6e}"]
      for (path, x), (s, q) in zip(leaves, stats, strict=True)
    ]
  )
  return hashlib.sha256(text.encode()).hexdigest()


def cache_spec(config, teacher_fingerprint: str, local_batch: int) -> dict:
  """Everything that fixes the cache's contents; a resumed save must match it exactly."""
  return {
    "format_version": offline_cache.FORMAT_VERSION,
    "top_k": config.kd_offline_top_k,
    "vocab_size": config.vocab_size,
    "max_target_length": config.max_target_length,
    "temperatures": offline_cache.temperatures(config),
    "logits_dtype": config.kd_offline_logits_dtype,
    "teacher_checkpoint": os.path.abspath(config.kd_teacher_parameters_path),
    "teacher_fingerprint": teacher_fingerprint,
    "tokenizer_fingerprint": offline_cache.tokenizer_fingerprint(config),
    "data": offline_cache.data_spec(config),
    "process_count": jax.process_count(),
    "sequences_per_batch_per_process": local_batch,
    "batches_per_shard": config.kd_offline_batches_per_shard,
  }


class ShardWriter(threading.Thread):
  """Encodes and writes batches from a queue; closes a shard every `batches_per_shard` batches and
  records it (with the data iterator state after it) in this process's progress file."""

  def __init__(self, directory: str, layout: offline_cache.RecordLayout, progress: dict, batches_per_shard: int):
    super().__init__(daemon=True)
    self.directory, self.layout, self.progress = directory, layout, progress
    self.batches_per_shard = batches_per_shard
    self.queue: queue.Queue = queue.Queue(maxsize=4)
    self.error: BaseException | None = None
    self._writer, self._records, self._tokens, self._batches = None, 0, 0, 0

  def _open(self) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    self._file = offline_cache.shard_name(jax.process_index(), len(self.progress["finished"]))
    self._writer = ArrayRecordWriter(os.path.join(self.directory, self._file), _ARRAY_RECORD_OPTIONS)
    self._records = self._tokens = self._batches = 0

  def _close(self, iterator_state) -> None:
    self._writer.close()
    size = os.path.getsize(os.path.join(self.directory, self._file))
    shard = {"file": self._file, "records": self._records, "tokens": self._tokens, "bytes": size}
    self.progress["finished"].append({**shard, "iterator_state": iterator_state})
    offline_cache.write_json_atomic(offline_cache.progress_path(self.directory, jax.process_index()), self.progress)
    self._writer = None

  def _write_batch(self, host_batch: dict, teacher_out) -> None:
    values, ids, lse = (local_rows(x) for x in teacher_out)
    if not np.array_equal(host_batch["inputs_segmentation"], host_batch["targets_segmentation"]):
      raise ValueError("inputs and targets segmentations differ; the cache stores one")
    for row in range(values.shape[0]):
      fields = {name: host_batch[name][row] for name in offline_cache.TOKEN_FIELDS}
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


def _read_progress(directory: str, spec: dict) -> dict:
  path = offline_cache.progress_path(directory, jax.process_index())
  if not os.path.isfile(path):
    return {"spec": spec, "finished": []}
  with open(path, encoding="utf-8") as f:
    progress = json.load(f)
  if progress["spec"] != spec:
    changed = next(k for k in spec if progress["spec"].get(k) != spec[k])
    raise offline_cache.CacheError(
      f"kd_offline_output_dir: {directory!r} holds a cache made with another {changed!r}; use a new folder"
    )
  return progress


def write_manifest(directory: str, spec: dict) -> dict:
  shards = []
  for process in range(jax.process_count()):
    with open(offline_cache.progress_path(directory, process), encoding="utf-8") as f:
      finished = json.load(f)["finished"]
    shards += [{k: v for k, v in s.items() if k != "iterator_state"} | {"process": process} for s in finished]
  manifest = {
    **spec,
    "shards": shards,
    "sequences": sum(s["records"] for s in shards),
    "tokens": sum(s["tokens"] for s in shards),
    "bytes": sum(s["bytes"] for s in shards),
  }
  offline_cache.write_json_atomic(os.path.join(directory, offline_cache.MANIFEST), manifest)
  return manifest


def _progress_bar(total: int, done: int):
  try:
    from tqdm import tqdm
  except ImportError:
    return None
  return tqdm(total=total, initial=done, unit="batch", desc="teacher top-k", disable=jax.process_index() != 0)


def save(config) -> dict:
  """Runs the whole job; returns the manifest."""
  directory = config.kd_offline_output_dir
  os.makedirs(directory, exist_ok=True)
  mesh = sharding.create_mesh(config)
  batch_size = global_batch_size(config)
  local_batch = batch_size // jax.process_count()
  teacher, teacher_params = distillation.load_teacher(config, mesh, layout=None)
  spec = cache_spec(config, params_fingerprint(teacher_params), local_batch)
  progress = _read_progress(directory, spec)
  it = input_pipeline.make_iterator(config, build_corpus(config), "train", local_batch)
  done = len(progress["finished"]) * config.kd_offline_batches_per_shard
  if progress["finished"]:
    it.set_state(progress["finished"][-1]["iterator_state"])
  batch_sharding = sharding.batch_sharding(mesh)
  step = jax.jit(
    functools.partial(
      teacher_cache_step,
      teacher.graphdef,
      top_k=config.kd_offline_top_k,
      temperatures=tuple(spec["temperatures"]),
      value_dtype=offline_cache.VALUE_DTYPES[config.kd_offline_logits_dtype],
      chunk_size=config.loss_chunk_size,
    ),
    in_shardings=(teacher.param_shardings, batch_sharding),
    out_shardings=batch_sharding,
  )
  writer = ShardWriter(directory, offline_cache.layout_of(spec), progress, config.kd_offline_batches_per_shard)
  writer.start()
  bar = _progress_bar(config.steps, done)
  with jax.set_mesh(mesh):
    for index in range(done, config.steps):
      host_batch = next(it)
      ends_shard = (index + 1) % config.kd_offline_batches_per_shard == 0 or index + 1 == config.steps
      writer.put(
        (
          host_batch,
          step(teacher_params, to_global(host_batch, batch_sharding)),
          it.get_state() if ends_shard else None,
        )
      )
      if bar is not None:
        bar.update()
  writer.queue.put(None)
  writer.join()
  if writer.error is not None:
    raise writer.error
  if bar is not None:
    bar.close()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("offline cache shards written")
  return write_manifest(directory, spec) if jax.process_index() == 0 else spec


def main(argv: list[str]) -> int:
  try:
    config = pyconfig.initialize(argv[1:], {"use_kd": True})
    if not config.kd_offline_output_dir:
      raise pyconfig.ConfigError("kd_offline_output_dir: the folder to write the cache to must be given")
  except pyconfig.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  maybe_initialize_distributed(config)
  try:
    manifest = save(config)
  except (FileNotFoundError, ValueError, offline_cache.CacheError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if jax.process_index() == 0:
    per_token = manifest["bytes"] / max(manifest["tokens"], 1)
    print(
      f"wrote {manifest['sequences']} sequences ({manifest['tokens']:,} tokens) in {len(manifest['shards'])} shards "
      f"to {config.kd_offline_output_dir}: {per_token:.1f} bytes per token"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
