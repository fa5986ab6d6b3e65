"""flash vs dot_product attention on this machine: forward+backward time and compiled temporary memory.

  python benchmarks/attention.py [--lengths 1024,2048,4096,8192] [--heads 8] [--kv_heads 2] [--runs 3]

Both kernels run the same causal, packed (4 segments per row), grouped-query problem in float32 at
batch 1, head dim 64; the times are medians of `--runs` timed calls after a warm-up, measured side by
side in one process. The ratio decides where `attention=autoselect` switches to flash on CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from MaxText.model.attention import dot_product_attention, flash_attention  # noqa: E402


def _processor() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "unknown"


def _problem(length: int, heads: int, kv_heads: int):
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, length, heads, 64)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(1, length, kv_heads, 64)), jnp.float32) for _ in range(2))
  segments = jnp.asarray(np.repeat(np.arange(1, 5), length // 4)[None])
  return q, k, v, segments


def _measure(kernel, args, runs: int) -> tuple[float, float]:
  loss = lambda q, k, v, s: jnp.sum(kernel(q, k, v, s) ** 2)
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  temp = step.lower(*args).compile().memory_analysis().temp_size_in_bytes
  jax.block_until_ready(step(*args))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times), temp / 2**20


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--lengths", default="1024,2048,4096,8192")
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--kv_heads", type=int, default=2)
  parser.add_argument("--runs", type=int, default=3)
  args = parser.parse_args()
  print(f"processor: {_processor()} ({os.cpu_count()} cores), jax {jax.__version__}, {jax.default_backend()}")
  print(f"batch 1, {args.heads} query / {args.kv_heads} kv heads, head dim 64, float32, forward + backward")
  print("| tokens | dot_product s | flash s | flash / dot_product | dot_product temp MiB | flash temp MiB |")
  print("|---|---|---|---|---|---|")
  for length in (int(x) for x in args.lengths.split(",")):
    problem = _problem(length, args.heads, args.kv_heads)
    dense_s, dense_mib = _measure(dot_product_attention, problem, args.runs)
    flash_s, flash_mib = _measure(flash_attention, problem, args.runs)
    print(
      f"| {length} | {dense_s:.3f} | {flash_s:.3f} | {flash_s / dense_s:.2f} | {dense_mib:,.0f} | {flash_mib:,.0f} |"
    )


if __name__ == "__main__":
  main()
