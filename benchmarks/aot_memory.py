"""Will the seed's runs fit? Compiles the exact train steps ahead of time for TPU v5p (libtpu, no TPU) and
prints per-chip memory from XLA's memory analysis.

  python benchmarks/aot_memory.py [--only NAME] [--attention KERNEL] [--set key=value,...]

Rows: llama3.1-8b CE at 1 and 4 sequences of 8192 per chip; the seed's llama3.2-1b student distilled
from a llama3.1-8b teacher (online, and offline from a top-64 cache); llama3.1-70b -> llama3.1-8b on
the smallest v5p slice where it fits; the online rows again with the teacher's matmul weights in int8
(`kd_teacher_dtype=int8`); and the splash and flash attention kernels alone per layer at 8192
tokens. All: fsdp over every chip, remat full, bf16 compute, float32 master weights, teachers stored in
bf16, attention `autoselect` (splash on TPU) unless --attention names another kernel.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import yaml  # noqa: E402

from MaxText import config as config_lib  # noqa: E402
from MaxText.model.attention import attend  # noqa: E402
from MaxText.model.splash_attention import _attend_shard  # noqa: E402
from MaxText.parallel.sharding import MESH_AXES  # noqa: E402
from MaxText.training import aot  # noqa: E402

COMMON = {
  "dataset_type": "synthetic",
  "max_target_length": 8192,
  "remat_policy": "full",
  "dtype": "bfloat16",
  "ici_fsdp_parallelism": -1,
}
TEACHER_8B = {
  "use_kd": True,
  "kd_teacher_parameters_path": "/ckpt/llama3.1-8b",  # never read: the compile needs shapes only
  "kd_teacher_model_name": "llama3.1-8b",
  "kd_teacher_overrides": "weight_dtype=bfloat16",
  "kd_teacher_dtype": "bfloat16",
  "kd_temperature": 2.0,
}
RUNS = {
  "8b CE, 1 x 8192": ("v5p-16", {"model_name": "llama3.1-8b", "per_device_batch_size": 1}),
  "8b CE, 4 x 8192": ("v5p-16", {"model_name": "llama3.1-8b", "per_device_batch_size": 4}),
  "1b <- 8b online KD, 4 x 8192": ("v5p-16", {"model_name": "llama3.2-1b", "per_device_batch_size": 4, **TEACHER_8B}),
  "1b <- 8b online KD, int8 teacher, 4 x 8192": (
    "v5p-16",
    {"model_name": "llama3.2-1b", "per_device_batch_size": 4, **TEACHER_8B, "kd_teacher_dtype": "int8"},
  ),
  "1b offline KD (top-64), 4 x 8192": (
    "v5p-16",
    {
      "model_name": "llama3.2-1b",
      "per_device_batch_size": 4,
      "use_kd": True,
      "kd_offline_data_dir": "/cache",
      "kd_offline_top_k": 64,
      "kd_temperature": 2.0,
      "kd_offline_temperatures": "2.0",
    },
  ),
}
TEACHER_70B = {
  **TEACHER_8B,
  "kd_teacher_parameters_path": "/ckpt/llama3.1-70b",
  "kd_teacher_model_name": "llama3.1-70b",
}
SLICES_70B = ("v5p-8", "v5p-16", "v5p-32", "v5p-64")


def _row(name: str, topology: str, keys: dict, extra: dict) -> bool:
  started = time.perf_counter()
  config = config_lib.load_dict({**COMMON, **keys, **extra})
  try:
    report = aot.compile_step(config, aot.parse_topology(topology, 1))
  except aot.OverCapacityError as e:
    print(f"| {name} | {topology} | - | - | - | - | - | no: {str(e).split(': ', 1)[1][:90]} |", flush=True)
    return False
  gib = lambda n: f"{n / aot.GIB:.2f}"
  parts = report.parts
  print(
    f"| {name} | {topology} | {gib(parts['parameters'] + parts['kd_head'])} | {gib(parts['optimizer state'])} | "
    f"{gib(parts['teacher'])} | {gib(report.temp_bytes)} | {gib(report.peak_bytes)} | "
    f"{'yes' if report.fits else 'no'} ({report.flops / 1e12:.1f} TFLOP; compiled in "
    f"{time.perf_counter() - started:.0f} s) |",
    flush=True,
  )
  return report.fits


def _splash_heads_first(q_BxHxLxK, k_BxGxLxK, v_BxGxLxK, segment_ids_BxL):
  """The splash kernel on inputs already in its heads-first layout (no copies into or out of it)."""
  scale = jnp.asarray(1 / 128**0.5, q_BxHxLxK.dtype)
  return _attend_shard(q_BxHxLxK * scale, k_BxGxLxK, v_BxGxLxK, segment_ids_BxL, interpret=False)


def _attention_row(kernel: str, batch: int) -> None:
  """One layer's attention, forward + backward, on one v5p chip (a one-device mesh: the TPU is the target)."""
  device = aot.parse_topology("v5p-8", 1).devices()[0]
  mesh = jax.sharding.Mesh([[[device]]], MESH_AXES)
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  heads_first = kernel == "splash, heads-first inputs"
  layout = (lambda heads: (batch, heads, 8192, 128)) if heads_first else (lambda heads: (batch, 8192, heads, 128))
  q = jax.ShapeDtypeStruct(layout(32), jnp.bfloat16, sharding=spec)
  kv = jax.ShapeDtypeStruct(layout(8), jnp.bfloat16, sharding=spec)
  seg = jax.ShapeDtypeStruct((batch, 8192), jnp.int32, sharding=spec)
  attention = _splash_heads_first if heads_first else lambda q, k, v, s: attend(q, k, v, s, kernel)
  loss = lambda q, k, v, s: jnp.sum(attention(q, k, v, s).astype(jnp.float32))
  with jax.set_mesh(mesh):
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, seg).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes / aot.GIB
  print(
    f"{kernel} attention forward + backward, one layer, {batch} x 8192 tokens, 32/8 heads of 128, bf16: "
    f"{temp:.3f} GiB temporaries"
  )


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--only", default="", help="run the rows whose name contains this")
  parser.add_argument("--attention", default="autoselect", help="the attention key of the model rows")
  parser.add_argument("--set", default="", help="key=value,... over every model row's keys")
  args = parser.parse_args()
  settings = dict(kv.split("=", 1) for kv in args.set.split(",") if kv)
  extra = {"attention": args.attention, **{k: yaml.safe_load(v) for k, v in settings.items()}}
  print(
    "| run | slice | student params GiB | optimizer GiB | teacher GiB | temporaries GiB | peak GiB "
    "| fits (of 95 GiB per v5p chip) |"
  )
  print("|---|---|---|---|---|---|---|---|")
  for name, (topology, keys) in RUNS.items():
    if args.only in name:
      _row(name, topology, keys, extra)
  for teacher_dtype in ("bfloat16", "int8"):
    name = f"70b -> 8b online KD, {teacher_dtype} teacher, 1 x 8192"
    if args.only not in name:
      continue
    keys = {"model_name": "llama3.1-8b", "per_device_batch_size": 1, **TEACHER_70B, "kd_teacher_dtype": teacher_dtype}
    for topology in SLICES_70B:
      if _row(name, topology, keys, extra):
        break
  if args.only in "attention":
    for kernel in ("splash", "splash, heads-first inputs", "flash"):
      for batch in (1, 4):
        _attention_row(kernel, batch)


if __name__ == "__main__":
  main()
