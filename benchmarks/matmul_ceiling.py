"""The attainable matrix-product rate of this machine at the main job's KD step's shapes, through JAX,
NumPy and PyTorch, float32 and bfloat16: the ceiling a step's MFU on the CPU is measured against.

  .venv/bin/python benchmarks/matmul_ceiling.py [--rounds 5] [--seconds 0.3]

Shapes: the main job's step (SmolLM2-135M teacher, width 576, 9 query and 3 KV heads of 64, MLP 1536;
a student of the same family with MLP 1024; 8 x 256 tokens = 2048 rows; the loss's 256-token chunk of
the 49152-word unembedding), and one 2048-cubed product for the machine's best case. Each backend is
timed on the same inputs; a round times every (shape, backend) in turn for about `--seconds` each, and
the table gives the median GFLOP/s over rounds (2 M N K per product) with the range. The last line is the
rate over the step's mix: the step's products weighted by how many of each a KD step runs (forward of
both models, backward of the student), as total FLOPs over the sum of their times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402

default_to_cpu_without_accelerator()  # libtpu is installed here for compiling only

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.kd_loss import processor  # noqa: E402

TOKENS, WIDTH, VOCAB, CHUNK = 2048, 576, 49152, 256
TEACHER_LAYERS, STUDENT_LAYERS = 30, 20
# (name, M, K, N, products of this shape in one KD step): the student's forward and its backward (two
# products of the same size per forward product) count 3 each, the teacher's forward 1
SHAPES = [
  ("q and o projections", TOKENS, WIDTH, WIDTH, 2 * (TEACHER_LAYERS + 3 * STUDENT_LAYERS)),
  ("k and v projections", TOKENS, WIDTH, 192, 2 * (TEACHER_LAYERS + 3 * STUDENT_LAYERS)),
  ("teacher MLP gate and up", TOKENS, WIDTH, 1536, 2 * TEACHER_LAYERS),
  ("teacher MLP down", TOKENS, 1536, WIDTH, TEACHER_LAYERS),
  ("student MLP gate and up", TOKENS, WIDTH, 1024, 2 * 3 * STUDENT_LAYERS),
  ("student MLP down", TOKENS, 1024, WIDTH, 3 * STUDENT_LAYERS),
  ("unembedding, one loss chunk", CHUNK, WIDTH, VOCAB, (1 + 3) * TOKENS // CHUNK),
  ("2048 cubed (best case)", 2048, 2048, 2048, 0),
  # the backward pass's layouts of the student's MLP gate and up (not in the mix, which times every
  # product as its forward's layout): the input's gradient dy W^T and the weight's x^T dy
  ("student MLP gate and up, input grad (NT)", TOKENS, 1024, WIDTH, 0, "nt"),
  ("student MLP gate and up, weight grad (TN)", WIDTH, TOKENS, 1024, 0, "tn"),
]


def _layout(shape) -> str:
  return shape[5] if len(shape) > 5 else "nn"


def _stored(a, b, layout: str):
  """The operands as the product reads them: transposed in memory where the layout says so."""
  return (a.T.copy() if layout == "tn" else a), (b.T.copy() if layout == "nt" else b)


def _oriented(a, b, layout: str):
  return (a.T if layout == "tn" else a), (b.T if layout == "nt" else b)


def _backends(torch):
  """name -> (make inputs from two float32 NumPy arrays, a product of a layout that waits for its result)."""
  jitted = {layout: jax.jit(lambda a, b, o=layout: jnp.matmul(*_oriented(a, b, o))) for layout in ("nn", "nt", "tn")}
  on_jax = lambda layout: lambda a, b: jitted[layout](a, b).block_until_ready()
  backends = {
    "jax float32": (lambda a, b: (jnp.asarray(a), jnp.asarray(b)), on_jax),
    "jax bfloat16": (lambda a, b: (jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)), on_jax),
    "numpy float32": (lambda a, b: (a, b), lambda layout: lambda a, b: np.matmul(*_oriented(a, b, layout))),
  }
  if torch is not None:
    to = lambda dtype: lambda a, b: (torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype))
    on_torch = lambda layout: lambda a, b: torch.matmul(*_oriented(a, b, layout))
    backends["torch float32"] = (to(torch.float32), on_torch)
    backends["torch bfloat16"] = (to(torch.bfloat16), on_torch)
  return backends


def _gflops(multiply, a, b, flops: float, seconds: float) -> float:
  multiply(a, b)  # compiled / warmed
  calls, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    multiply(a, b)
    calls += 1
  return flops * calls / (time.perf_counter() - start) / 1e9


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--seconds", type=float, default=0.3, help="timing per shape and backend per round")
  args = parser.parse_args()
  try:
    import torch

    torch.set_num_threads(os.cpu_count())
  except ImportError:
    torch = None
  backends = _backends(torch)
  rng = np.random.default_rng(0)
  inputs = {}
  for shape in SHAPES:
    name, m, k, n = shape[:4]
    a, b = _stored(rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32), _layout(shape))
    inputs[name] = {backend: make(a, b) for backend, (make, _) in backends.items()}
  rates = {(shape[0], backend): [] for shape in SHAPES for backend in backends}
  for _ in range(args.rounds):
    for shape in SHAPES:
      name, m, k, n = shape[:4]
      for backend, (_, product) in backends.items():
        multiply = product(_layout(shape))
        rates[name, backend].append(_gflops(multiply, *inputs[name][backend], 2.0 * m * k * n, args.seconds))
  print(f"{processor()}; jax {jax.__version__}" + (f", torch {torch.__version__}" if torch else ""))
  print(f"GFLOP/s, median of {args.rounds} rounds (range)")
  print(f"{'shape (M x K x N)':<60}" + "".join(f"{b:>22}" for b in backends))
  for name, m, k, n, *_ in SHAPES:
    cells = [_cell(rates[name, b]) for b in backends]
    print(f"{f'{name} ({m} x {k} x {n})':<60}" + "".join(f"{c:>22}" for c in cells))
  step_flops = sum(2.0 * m * k * n * count for _, m, k, n, count, *_ in SHAPES)
  mix = []
  for backend in backends:
    per_shape = [
      (2.0 * m * k * n * count, statistics.median(rates[name, backend])) for name, m, k, n, count, *_ in SHAPES
    ]
    seconds = sum(flops / (rate * 1e9) for flops, rate in per_shape)
    mix.append(f"{step_flops / seconds / 1e9:.0f}")
  print(f"{f'the step mix ({step_flops / 1e12:.2f} TFLOP of products)':<60}" + "".join(f"{c:>22}" for c in mix))


def _cell(rates: list[float]) -> str:
  return f"{statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f})"


if __name__ == "__main__":
  main()
