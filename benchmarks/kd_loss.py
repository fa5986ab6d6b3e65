"""Value+grad time of each KD loss mode as a ratio to plain cross-entropy, and compiled temp memory.

  .venv/bin/python benchmarks/kd_loss.py [--chunk_elements 8388608] [--repeats 5] [--runs 3] [--only top-p]

Shapes: 1024 tokens x 32768 vocab and 256 tokens x 128256 vocab, float32 logits (random normal, std 2),
run through the training path for CE and for KD alike: `losses.chunking.chunked_loss` over chunks of
`chunk_elements / vocab` tokens (what `loss_chunk_size` should be set to for that vocabulary: 256 tokens
at 32k, 64 at 128k), and in each chunk what a live teacher's chunk computes (`LiveChunk.divergence`, T 2).
The first row, "floor", is no KD mode but the least they all do: CE's work plus the teacher's chunk
taken out of the [N, V] input and read (sum(lse(s) - s . t), whose gradient softmax(s) - t reads it).
Everything is measured side by side in one process; each of `--runs` runs times CE and then every mode
(`--repeats` calls each), and the table gives the median ratio to that run's CE with the range over runs.
A last table shows the fused loss (hidden states + unembedding) keeps its temp memory flat as the token
count grows.
"""

from __future__ import annotations

import argparse
import functools
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

from MaxText import max_utils  # noqa: E402
from MaxText.distill.kd_loss import KDOptions, kd_chunk_sums  # noqa: E402
from MaxText.distill.sources import LiveChunk, LiveTeacher, Pruning  # noqa: E402
from MaxText.losses.chunking import chunked_loss  # noqa: E402
from MaxText.losses.divergence_family import Divergence  # noqa: E402

MODES = {
  # not a KD mode: the least any of them must do here, cross-entropy's one exp per student logit plus the
  # teacher's chunk taken out of `chunked_loss` and read (its logits as the target's weights, no exps)
  "floor: CE + teacher read": {"floor": True},
  "full KL": {},  # the divergences below are on full distributions unless their name says otherwise
  "top-k 64": {"top_k": 64},
  "top-k 64 + OTHER": {"top_k": 64, "use_other_bucket": True},
  "top-p 0.9": {"top_p": 0.9},
  "top-p 0.9 + OTHER": {"top_p": 0.9, "use_other_bucket": True},
  "hard labels": {"hard": True},
  "reverse KL": {"div": Divergence("reverse_kl")},
  "JSD beta 0.5": {"div": Divergence("jsd", 0.5)},
  "TVD": {"div": Divergence("tvd")},
  "skew forward KL 0.1": {"div": Divergence("skew_forward_kl", 0.1)},
  "skew reverse KL 0.1": {"div": Divergence("skew_reverse_kl", 0.1)},
  "JSD 0.5, top-p + OTHER": {"div": Divergence("jsd", 0.5), "top_p": 0.9, "use_other_bucket": True},
}


def processor() -> str:
  """The CPU model (ratios depend on it), from /proc/cpuinfo where there is one."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    names = []
  return f"{names[0]} x {len(names)}" if names else "unknown processor"


def _ce_chunk(xs, _):
  return {"v": jnp.sum(max_utils.cross_entropy_with_logits(xs["s"], xs["y"])[0])}


def _kd_chunk(xs, _, mode):
  if mode.get("floor"):
    return {"v": jnp.sum(jax.nn.logsumexp(xs["s"], axis=-1) - jnp.sum(xs["s"] * xs["t"], axis=-1))}
  if mode.get("hard"):
    return {"v": jnp.sum(max_utils.cross_entropy_with_logits(xs["s"], jnp.argmax(xs["t"], -1))[0])}
  pruning = Pruning(mode.get("top_k", 0), mode.get("top_p", 0.0), mode.get("use_other_bucket", False))
  teacher = LiveChunk(xs["t"], None, pruning, mode.get("div", Divergence()))
  return {"v": jnp.sum(teacher.divergence(xs["s"], 2.0)[0])}


def _loss(chunk_fn, per_token, chunk):
  """The training path: `chunked_loss`, each chunk's gradient taken in the forward pass."""
  return chunked_loss(chunk_fn, per_token, {}, chunk, lambda sums: sums["v"], wrt=(("s",), ()))[0]


def _compile(fn, args):
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  return compiled


def _seconds(compiled, args, repeats):
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(compiled(*args))
  return (time.perf_counter() - start) / repeats


def bench_shape(tokens, vocab, chunk, repeats, runs, only):
  rng = np.random.default_rng(0)
  s = jnp.asarray(rng.normal(size=(tokens, vocab)) * 2, jnp.float32)
  t = jnp.asarray(rng.normal(size=(tokens, vocab)) * 2, jnp.float32)
  y = jnp.asarray(rng.integers(0, vocab, tokens), jnp.int32)
  programs = {"CE": (jax.value_and_grad(lambda s, y: _loss(_ce_chunk, {"s": s, "y": y}, chunk)), (s, y))}
  for name, mode in MODES.items():
    if only and only not in name:
      continue
    kd_chunk = functools.partial(_kd_chunk, mode=mode)
    programs[name] = (jax.value_and_grad(lambda s, t, f=kd_chunk: _loss(f, {"s": s, "t": t}, chunk)), (s, t))
  compiled = {name: _compile(fn, args) for name, (fn, args) in programs.items()}
  seconds = {name: [] for name in programs}
  for _ in range(runs):
    for name, (_, args) in programs.items():
      seconds[name].append(_seconds(compiled[name], args, repeats))
  base = statistics.median(seconds["CE"])
  print(
    f"\n{tokens} tokens x {vocab} vocab, chunk {chunk}: CE value+grad {base * 1e3:.1f} ms (median of {runs} runs), "
    f"temp {compiled['CE'].memory_analysis().temp_size_in_bytes / 2**20:.0f} MiB"
  )
  print(f"{'mode':<24} {'x CE':>6} {'range':>11} {'ms':>7} {'temp MiB':>9}")
  for name in list(programs)[1:]:
    ratios = [kd / ce for kd, ce in zip(seconds[name], seconds["CE"], strict=True)]
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    memory = compiled[name].memory_analysis().temp_size_in_bytes / 2**20
    print(
      f"{name:<24} {statistics.median(ratios):>6.2f} {spread:>11} "
      f"{statistics.median(seconds[name]) * 1e3:>7.1f} {memory:>9.0f}"
    )


def fused_memory(tokens, vocab=32768, dim=256, chunk=256):
  options = KDOptions(use_hard_labels=False, z_loss=0.0, temperature_is_one=False)
  source = LiveTeacher(None, None, None, Pruning(top_p=0.9, use_other_bucket=True))

  def loss(h, w, th, tw):
    per_token = {
      "hidden": h,
      "teacher_hidden": th,
      "targets": jnp.zeros(tokens, jnp.int32),
      "weights": jnp.ones(tokens, jnp.float32),
    }
    shared = {"w_DxV": w, "teacher_w_DxV": tw, "alpha": jnp.float32(0.5), "temperature": jnp.float32(2.0)}
    fn = functools.partial(kd_chunk_sums, options=options, source=source)
    return chunked_loss(fn, per_token, shared, chunk, lambda sums: sums["total_loss_sum"])[0]

  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((tokens, dim), (dim, vocab), (tokens, dim), (dim, vocab))]
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*shapes).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--chunk_elements", type=int, default=256 * 32768)
  parser.add_argument("--repeats", type=int, default=5, help="calls per program per run")
  parser.add_argument("--runs", type=int, default=3, help="runs; the table gives the median and range of ratios")
  parser.add_argument("--only", default="", help="only the modes whose name holds this")
  parser.add_argument("--skip_memory", action="store_true", help="leave out the fused-loss memory table")
  args = parser.parse_args()
  print(f"{jax.devices()[0].platform} device ({processor()}), float32 logits")
  for tokens, vocab in ((1024, 32768), (256, 128256)):
    bench_shape(tokens, vocab, max(1, args.chunk_elements // vocab), args.repeats, args.runs, args.only)
  if args.skip_memory:
    return
  print("\nfused KD loss (hidden 256 -> vocab 32768, top-p 0.9 + OTHER, chunk 256), value+grad temp memory:")
  for tokens in (1024, 4096, 16384):
    print(
      f"  {tokens:>6} tokens: {fused_memory(tokens) / 2**20:.0f} MiB "
      f"(one full float32 logits array would be {tokens * 32768 * 4 / 2**20:.0f} MiB)"
    )


if __name__ == "__main__":
  main()
