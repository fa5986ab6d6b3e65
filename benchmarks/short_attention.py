"""Attention alone at the main job's shapes on the CPU: forward + backward of each kernel and of PyTorch's
`scaled_dot_product_attention`, interleaved rounds in one process.

  .venv/bin/python benchmarks/short_attention.py [--rounds 9] [--batch 8] [--length 256] [--rows 16,32,64]
  .venv/bin/python benchmarks/short_attention.py --step_rounds 6     (the whole main-job steps, A/B)

Shapes: SmolLM2's 9 query heads over 3 key/value heads, head dim 64, float32, one document per row,
causal. Each call is the gradient of sum(out^2) with respect to q, k and v; every kernel's gradients
are checked against dot_product's first. Per row: the median ms per call with its range, and the time
for the main job's 20 student layers. The kernels are `flash` as one tile (what the CPU ran before
`cpu_attention`), `dot_product`, and `short_causal_attention` at each `--rows`.

`--step_rounds N` instead times the main job's whole CE and KD steps (benchmarks/kd_step.py's main-job
config, float32, remat none) as they are and with `flash` dispatched as before `cpu_attention` existed,
both compiled ahead of time in one process, N interleaved rounds of one step each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from MaxText.model.attention import dot_product_attention, flash_attention  # noqa: E402
from MaxText.model.cpu_attention import short_causal_attention  # noqa: E402

HEADS, KV_HEADS, DIM, LAYERS = 9, 3, 64, 20


def _jax_step(kernel, segments):
  loss = lambda q, k, v: jnp.sum(kernel(q, k, v, segments) ** 2)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _torch_step(q, k, v):
  tq, tk, tv = (torch.tensor(np.asarray(x)).transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))

  def step():
    for x in (tq, tk, tv):
      x.grad = None
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True, enable_gqa=True)
    (out**2).sum().backward()

  return step


def _step_rounds(rounds: int) -> None:
  from benchmarks.kd_step import CONFIGS, Programs
  from MaxText.model import attention

  def compiled(programs) -> bool:
    with jax.set_mesh(programs.mesh):
      ce = programs.ce_step.lower(programs.state["ce"], None, programs.batches[0])
      kd = programs.kd_step.lower(programs.state["kd"], programs.teacher_params, programs.batches[0])
      programs.ce_step, programs.kd_step = ce.compile(), kd.compile()
    return "tensor<24x96x" in ce.as_text()  # the short kernel's [B * G, 32 * R, ...] blocks

  settings = "dtype=float32,remat_policy=none"
  now = Programs(CONFIGS["main-job"], "", 4, settings)
  assert compiled(now), "the main-job step does not run the short kernel"
  attention.short_causal_attention = attention.flash_attention  # the dispatch before cpu_attention
  jax.clear_caches()  # the layer scan's trace is cached by function: trace it again with the old dispatch
  before = Programs(CONFIGS["main-job"], "", 4, settings)
  assert not compiled(before)
  arms = {"now": now, "one flash tile": before}

  def seconds(programs, name, batch):
    with jax.set_mesh(programs.mesh):
      start = time.perf_counter()
      jax.block_until_ready(programs.run(name, batch))
      return time.perf_counter() - start

  names = ("CE step", "KD step")
  for programs in arms.values():
    for name in names:
      seconds(programs, name, programs.batches[0])
  times = {(arm, name): [] for arm in arms for name in names}
  for round_ in range(rounds):
    for name in names:
      for arm in list(arms)[:: 1 if round_ % 2 == 0 else -1]:
        times[(arm, name)].append(seconds(arms[arm], name, arms[arm].batches[1 + round_ % 3]))
  tokens = now.tokens_per_step
  print(f"main-job steps, {rounds} interleaved rounds; tokens/s median (range); time before / now within rounds")
  for name in names:
    ratios = [b / n for b, n in zip(times[("one flash tile", name)], times[("now", name)], strict=True)]
    cells = [
      f"{arm} {tokens / statistics.median(times[(arm, name)]):.0f} "
      f"({tokens / max(times[(arm, name)]):.0f}-{tokens / min(times[(arm, name)]):.0f})"
      for arm in arms
    ]
    print(f"{name}: {'; '.join(cells)}; {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--rows", default="16,32,64")
  parser.add_argument("--step_rounds", type=int, default=0, help="time the whole main-job steps instead")
  args = parser.parse_args()
  if args.step_rounds:
    return _step_rounds(args.step_rounds)
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(args.batch, args.length, HEADS, DIM)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(args.batch, args.length, KV_HEADS, DIM)), jnp.float32) for _ in range(2))
  segments = jnp.ones((args.batch, args.length), jnp.int32)
  kernels = {"dot_product": dot_product_attention, "flash (one tile)": flash_attention}
  for rows in (int(r) for r in args.rows.split(",")):
    kernels[f"short_causal rows={rows}"] = lambda *a, rows=rows: short_causal_attention(*a, rows=rows)
  steps = {name: _jax_step(kernel, segments) for name, kernel in kernels.items()}
  reference = steps["dot_product"](q, k, v)[1]
  for name, step in steps.items():
    worst = max(float(jnp.max(jnp.abs(g - r))) for g, r in zip(step(q, k, v)[1], reference, strict=True))
    print(f"{name}: largest gradient difference from dot_product {worst:.1e}")
  calls = {name: (lambda s=step: jax.block_until_ready(s(q, k, v))) for name, step in steps.items()}
  calls["torch sdpa"] = _torch_step(q, k, v)
  calls["torch sdpa"]()
  times = {name: [] for name in calls}
  for round_ in range(args.rounds):
    for name in list(calls)[:: 1 if round_ % 2 == 0 else -1]:  # alternate the order between rounds
      start = time.perf_counter()
      calls[name]()
      times[name].append(time.perf_counter() - start)
  print(f"jax {jax.__version__}, torch {torch.__version__}, {os.cpu_count()} cores, {args.rounds} rounds")
  print(f"B {args.batch}, L {args.length}, {HEADS}/{KV_HEADS} heads, head dim {DIM}, float32, forward + backward")
  print(f"| kernel | ms per call, median (range) | s for {LAYERS} layers | / torch |")
  print("|---|---|---|---|")
  torch_median = statistics.median(times["torch sdpa"])
  for name, ts in times.items():
    median = statistics.median(ts)
    print(
      f"| {name} | {1e3 * median:.1f} ({1e3 * min(ts):.1f}-{1e3 * max(ts):.1f}) | {LAYERS * median:.2f} "
      f"| {median / torch_median:.2f} |"
    )


if __name__ == "__main__":
  main()
