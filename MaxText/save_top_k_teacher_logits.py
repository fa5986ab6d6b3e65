"""Runs the teacher once over the training data stream and caches what offline distillation needs.

  python MaxText/save_top_k_teacher_logits.py base.yml kd_teacher_parameters_path=CKPT \
      kd_offline_output_dir=DIR kd_offline_top_k=64 kd_offline_temperatures=2.0 [steps=N per_device_batch_size=B ...]

It reads the same stream a training run of this config would (data keys, packing, shuffle seed): `steps`
batches of the global batch. Per sequence it stores tokens, targets, segmentation and positions, the
top-k raw teacher logits, their ids and the full-vocabulary log-sum-exp at T = 1 and each listed
temperature (format in data/teacher_cache.py). A background thread writes, so the teacher never waits on
disk. A rerun resumes: finished shards are kept and the shard that was being written is rewritten.
"""

from __future__ import annotations

import functools
import os
import sys

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only the config's modules here: the JAX stack is imported by the functions that run the job, once the
# config and its files are known to be good (a config error returns without it).
from MaxText import config as config_lib  # noqa: E402
from MaxText.config import storage  # noqa: E402
from MaxText.config.paths import check_output_folder  # noqa: E402
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402
from MaxText.training import preflight  # noqa: E402


def teacher_cache_step(source, params, batch, top_k: int, temperatures: tuple, value_dtype, chunk_size: int):
  """[B, L, k] values and ids and [B, n_T, L] log-sum-exps of the teacher source's logits (one teacher, or an
  ensemble's combined logits) over the kd_vocab_size ids, projected chunk by chunk (no full logits)."""
  import jax.numpy as jnp

  from MaxText.losses.chunking import chunked_map
  from MaxText.losses.targets import cache_fields

  inputs = source.inputs(params, batch, None)
  batch_size, length = batch["targets"].shape
  per_token = {**inputs.per_token, "targets": batch["targets"].reshape(-1)}

  def one_chunk(xs, shared):
    logits = source.chunk(xs, shared).cache_logits()
    return dict(zip(("values", "ids", "lse"), cache_fields(logits, top_k, temperatures, value_dtype), strict=True))

  out = chunked_map(one_chunk, per_token, inputs.shared, chunk_size)
  lse_BxTxL = jnp.swapaxes(out["lse"].reshape(batch_size, length, -1), 1, 2)
  values, ids = (out[name].reshape(batch_size, length, top_k) for name in ("values", "ids"))
  return values, ids, lse_BxTxL


def _progress_bar(total: int, done: int):
  import jax

  try:
    from tqdm import tqdm
  except ImportError:
    return None
  quiet = None if jax.process_index() == 0 else True  # None: a bar on a terminal only, none in logs
  return tqdm(total=total, initial=done, unit="batch", desc="teacher top-k", disable=quiet)


def save(config) -> dict:
  """Runs the whole job; returns the manifest."""
  import jax

  from MaxText.data import input_pipeline, teacher_cache
  from MaxText.data import teacher_cache_writer as writer_lib
  from MaxText.distill.teacher import load_live_teacher
  from MaxText.model.params_io import params_fingerprint
  from MaxText.parallel import sharding
  from MaxText.training.runtime import build_corpus, global_batch_size, to_global

  directory = config.kd_offline_output_dir
  check_output_folder("kd_offline_output_dir", directory, teacher_cache.CACHE_FILES)  # never a user's folder
  storage.makedirs(directory)
  mesh = sharding.create_mesh(config)
  batch_size = global_batch_size(config)
  local_batch = batch_size // jax.process_count()
  teacher, teacher_params = load_live_teacher(config, mesh)
  spec = writer_lib.cache_spec(config, params_fingerprint(teacher_params), local_batch)
  progress = writer_lib.read_progress(directory, spec)
  it = input_pipeline.make_iterator(config, build_corpus(config), "train", local_batch)
  done = len(progress["finished"]) * config.kd_offline_batches_per_shard
  if progress["finished"]:
    it.set_state(progress["finished"][-1]["iterator_state"])
  batch_sharding = sharding.batch_sharding(mesh)
  step = jax.jit(
    functools.partial(
      teacher_cache_step,
      teacher,
      top_k=config.kd_offline_top_k,
      temperatures=tuple(spec["temperatures"]),
      value_dtype=teacher_cache.batch_value_dtype(spec["format_version"], config.kd_offline_logits_dtype),
      chunk_size=config.loss_chunk_size,
    ),
    in_shardings=(teacher.param_shardings, batch_sharding),
    out_shardings=batch_sharding,
  )
  writer = writer_lib.ShardWriter(
    directory, teacher_cache.layout_of(spec), progress, config.kd_offline_batches_per_shard
  )
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
  return writer_lib.write_manifest(directory, spec) if jax.process_index() == 0 else spec


def main(argv: list[str]) -> int:
  default_to_cpu_without_accelerator()
  config_lib.silence_async_leftovers()
  try:
    config = config_lib.load(argv[1:], {"use_kd": True})
    if not config.kd_offline_output_dir:
      raise config_lib.ConfigError("kd_offline_output_dir: the folder to write the cache to must be given")
    preflight.run(config)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  import jax

  from MaxText.training.runtime import maybe_initialize_distributed

  maybe_initialize_distributed(config)
  try:
    manifest = save(config)
  except config_lib.UserError as e:
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
