"""Offline distillation figures, side by side in one run:

  .venv/bin/python benchmarks/offline_kd.py [--top_k 64] [--vocab 32000] [--batches 8]

1. bytes per token of the float-format cache (bf16 values, T = 1 and T = 2 stored), from the shard sizes;
2. save throughput: the save job's per-batch time against the teacher's forward + top-k alone (both
   as the slope between a short and a long run, so compilation drops out);
3. an offline KD train step against an online KD step on the same student and batches.
The teacher (width 512, 6 layers) is 8x the student's width-squared; synthetic data, float32, 1 device.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from MaxText import pyconfig  # noqa: E402
from MaxText import save_top_k_teacher_logits as save_job  # noqa: E402
from MaxText.data import teacher_cache  # noqa: E402
from MaxText.data.input_pipeline import make_iterator  # noqa: E402
from MaxText.distill.objective import make_loss_fn  # noqa: E402
from MaxText.distill.schedules import step_metrics  # noqa: E402
from MaxText.distill.teacher import build_teacher, load_live_teacher  # noqa: E402
from MaxText.model import decoder as model_lib  # noqa: E402
from MaxText.model import params_io  # noqa: E402
from MaxText.parallel import sharding  # noqa: E402
from MaxText.training import preflight  # noqa: E402
from MaxText.training.runtime import to_global  # noqa: E402
from MaxText.training.state import init_state, make_layout  # noqa: E402
from MaxText.training.step import make_train_step  # noqa: E402

TEACHER = "emb_dim=512,num_decoder_layers=6,num_query_heads=8,num_kv_heads=4,head_dim=64,mlp_dim=2048"
STUDENT = {"emb_dim": 128, "num_decoder_layers": 2, "num_query_heads": 4, "num_kv_heads": 2, "head_dim": 32}


def _common(args) -> dict:
  return {
    "model_name": "default",
    **STUDENT,
    "mlp_dim": 512,
    "vocab_size": args.vocab,
    "dataset_type": "synthetic",
    "per_device_batch_size": 4,
    "max_target_length": 256,
    "dtype": "float32",
    "remat_policy": "none",
    "loss_chunk_size": 256,
    "use_kd": True,
    "kd_teacher_model_name": "default",
    "kd_teacher_overrides": f"{TEACHER},vocab_size={args.vocab}",
    "kd_temperature": 2.0,
    "kd_offline_format": "float",  # the float layout's sizes are printed; benchmarks/compact_cache.py has format 3
  }


def _make_teacher(path: str, vocab: int) -> None:
  keys = {k: int(v) for k, v in (kv.split("=") for kv in TEACHER.split(","))}
  teacher_config = pyconfig.from_dict({"model_name": "default", "vocab_size": vocab, **keys})
  _, params, _ = model_lib.split_params(model_lib.Decoder(teacher_config, nnx.Rngs(3)))
  params_io.save_params(path, jax.tree.map(lambda x: x * 10.0, params))  # a peaked teacher


def _save_seconds(base: dict, out: str, batches: int) -> float:
  config = pyconfig.from_dict({**base, "kd_offline_output_dir": out, "steps": batches})
  start = time.perf_counter()
  save_job.save(config)
  return time.perf_counter() - start


def _timed(fn, calls: int) -> float:
  jax.block_until_ready(fn(0))
  start = time.perf_counter()
  for i in range(calls):
    result = fn(i + 1)
  jax.block_until_ready(result)
  return (time.perf_counter() - start) / calls


def _teacher_seconds_per_batch(config, mesh, batches) -> float:
  teacher, params = load_live_teacher(config, mesh)
  fields = tuple(teacher_cache.temperatures(config))
  step = jax.jit(
    lambda p, b: save_job.teacher_cache_step(
      teacher,
      p,
      b,
      config.kd_offline_top_k,
      fields,
      teacher_cache.VALUE_DTYPES["bfloat16"],
      256,
    )
  )
  return _timed(lambda i: step(params, batches[i % len(batches)]), len(batches))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--top_k", type=int, default=64)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--batches", type=int, default=8)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    base = _common(args)
    teacher_path = os.path.join(tmp, "teacher")
    _make_teacher(teacher_path, args.vocab)
    base.update(kd_teacher_parameters_path=teacher_path, kd_offline_top_k=args.top_k, kd_offline_temperatures="2.0")
    short = _save_seconds(base, os.path.join(tmp, "short"), 2)
    long_dir = os.path.join(tmp, "long")
    long = _save_seconds(base, long_dir, 2 + args.batches)
    save_per_batch = (long - short) / args.batches
    manifest = teacher_cache.read_manifest(long_dir)
    tokens_per_batch = manifest["tokens"] / (2 + args.batches)

    config = pyconfig.from_dict({**base, "steps": 1000})
    mesh = sharding.create_mesh(config)
    batch_sharding = sharding.batch_sharding(mesh)
    data = make_iterator(config, None, "train", 4)
    batches = [to_global(next(data), batch_sharding) for _ in range(args.batches + 1)]
    with jax.set_mesh(mesh):
      teacher_per_batch = _teacher_seconds_per_batch(config, mesh, batches)
      online, offline = _step_times(config, base, long_dir, mesh, batches, args.batches)
  print(f"student {STUDENT} vocab {args.vocab}; teacher {TEACHER}; batch 4 x 256; k {args.top_k}")
  bytes_per_token = manifest["bytes"] / manifest["tokens"]
  layout_bytes = teacher_cache.layout_of(manifest).record_bytes / manifest["max_target_length"]
  print(
    f"cache: {bytes_per_token:.1f} bytes/token on disk ({layout_bytes:.0f} in the record layout: "
    f"k x 6 = {6 * args.top_k}, lse 4 x {len(manifest['temperatures'])}, tokens/targets/positions/segments 16)"
  )
  print(
    f"save: {save_per_batch * 1e3:.0f} ms/batch ({tokens_per_batch / save_per_batch:,.0f} tokens/s) | teacher "
    f"forward + top-k alone {teacher_per_batch * 1e3:.0f} ms/batch | ratio {save_per_batch / teacher_per_batch:.2f}"
  )
  ratio = offline / online
  print(f"train step: online KD {online * 1e3:.0f} ms | offline KD {offline * 1e3:.0f} ms | ratio {ratio:.2f}")


def _step_times(config, base, cache_dir, mesh, batches, calls):
  layout = make_layout(config, mesh, None)
  teacher, teacher_params = load_live_teacher(config, mesh)
  online_loss = make_loss_fn(config, layout.graphdef, teacher)
  online_step = jax.jit(
    make_train_step(config, layout.tx, online_loss, step_metrics(config, False)), donate_argnums=(0,)
  )
  offline_config = pyconfig.from_dict(
    {**{k: v for k, v in base.items() if not k.startswith("kd_teacher")}, "kd_offline_data_dir": cache_dir}
  )
  cache = preflight.run(offline_config).cache
  cached_teacher, _ = build_teacher(offline_config, mesh, cache)
  offline_loss = make_loss_fn(offline_config, layout.graphdef, cached_teacher)
  offline_step = jax.jit(
    make_train_step(offline_config, layout.tx, offline_loss, step_metrics(offline_config, False)), donate_argnums=(0,)
  )
  cached = teacher_cache.make_iterator(cache, offline_config.data_shuffle_seed, 4, 0, 1)
  batch_sharding = sharding.batch_sharding(mesh)
  cached_batches = [to_global(next(cached), batch_sharding) for _ in range(calls + 1)]
  state = {"s": init_state(config, layout)}

  def run(step, teacher, data):
    def one(i):
      state["s"], metrics = step(state["s"], teacher, data[i % len(data)])
      return metrics

    return one

  online = _timed(run(online_step, teacher_params, batches), calls)
  state["s"] = init_state(config, layout)
  offline = _timed(run(offline_step, None, cached_batches), calls)
  return online, offline


if __name__ == "__main__":
  main()
