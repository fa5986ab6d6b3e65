"""The spec's helper, `max_utils.kl_divergence_between_logits`, beside the plain dense KL a user would write.

  .venv/bin/python benchmarks/kl_helper.py [--tokens 256] [--vocab 32768] [--rounds 7] [--repeats 5]

Value and gradient (with respect to the student's logits) of the mean per-token KL(teacher_T || student_T)
at T = 2 on random float32 logits (normal, std 2). The reference for each mode is the plain dense form
with autodiff's gradient: sum(p_t * (log_softmax(t / T) - log_softmax(s / T))), for top-k and top-p over
the kept teacher tokens renormalised (top-k by `lax.top_k`, the nucleus by sorting). Every program is
compiled first and its value checked against its reference; then each round times every program
(`--repeats` calls each) in turn. The table gives the median over rounds of the reference's time over the
helper's (above 1: the helper is faster) with the range, and the helper against the unpruned reference.
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

from MaxText import max_utils  # noqa: E402

TEMPERATURE = 2.0


def _kept_top_k(t, k):
  """The teacher's k largest logits (the smallest of top_k's values, not a slice: XLA CPU turns top_k + a
  slice into a sort of the whole row)."""
  return t >= jnp.min(jax.lax.top_k(t, k)[0], axis=-1, keepdims=True)


def _kept_top_p(t_logp, p):
  """The nucleus by sorting: tokens while the mass of the more probable ones is below p."""
  order = jnp.argsort(-t_logp, axis=-1)
  sorted_p = jnp.exp(jnp.take_along_axis(t_logp, order, axis=-1))
  kept_sorted = jnp.cumsum(sorted_p, axis=-1) - sorted_p < p
  rows = jnp.arange(t_logp.shape[0])[:, None]
  return jnp.zeros(t_logp.shape, bool).at[rows, order].set(kept_sorted)


def dense_kl(s, t, top_k=None, top_p=None):
  """The plain form: both log-softmaxes, the teacher's probabilities (pruned and renormalised), autodiff."""
  t = jax.lax.stop_gradient(t)
  t_logp = jax.nn.log_softmax(t / TEMPERATURE, axis=-1)
  if top_k or top_p:
    kept = _kept_top_k(t, top_k) if top_k else _kept_top_p(t_logp, top_p)
    t_logp = jnp.where(kept, t_logp, -jnp.inf)
    t_logp = t_logp - jax.nn.logsumexp(t_logp, axis=-1, keepdims=True)
  p = jnp.exp(t_logp)
  s_logp = jax.nn.log_softmax(s / TEMPERATURE, axis=-1)
  return jnp.sum(jnp.where(p > 0, p * (t_logp - s_logp), 0.0), axis=-1)


MODES = {  # name: the helper's keyword arguments; the reference of the same pruning, renormalised
  "unpruned": {},
  "top-k 64": {"top_k": 64},
  "top-p 0.9": {"top_p": 0.9},
}


def _program(fn):
  return jax.jit(jax.value_and_grad(lambda s, t: jnp.mean(fn(s, t))))


def _seconds(compiled, args, repeats):
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(compiled(*args))
  return (time.perf_counter() - start) / repeats


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--tokens", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=32768)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  s, t = (jnp.asarray(rng.normal(size=(args.tokens, args.vocab)) * 2, jnp.float32) for _ in range(2))
  programs = {}
  for name, kwargs in MODES.items():
    programs[f"dense {name}"] = _program(lambda s, t, kw=kwargs: dense_kl(s, t, **kw))
    programs[name] = _program(lambda s, t, kw=kwargs: max_utils.kl_divergence_between_logits(s, t, TEMPERATURE, **kw))
  values = {name: float(program(s, t)[0]) for name, program in programs.items()}  # compiles each
  for name in MODES:  # the same mean KL, within float32 rounding
    assert abs(values[name] - values[f"dense {name}"]) <= 1e-5 * values[name], (name, values)
  seconds = {name: [] for name in programs}
  for _ in range(args.rounds):
    for name, program in programs.items():
      seconds[name].append(_seconds(program, (s, t), args.repeats))
  print(f"{jax.devices()[0].platform}, {args.tokens} x {args.vocab} float32 logits, value + gradient, T {TEMPERATURE}")
  header = ("mode", "dense ms", "helper ms", "dense / helper", "range", "unpruned dense / helper")
  print("{:<11} {:>9} {:>10} {:>15} {:>11} {:>24}".format(*header))
  for name in MODES:
    same = [d / x for d, x in zip(seconds[f"dense {name}"], seconds[name], strict=True)]
    plain = [d / x for d, x in zip(seconds["dense unpruned"], seconds[name], strict=True)]
    dense_ms, helper_ms = (statistics.median(seconds[n]) * 1e3 for n in (f"dense {name}", name))
    print(
      f"{name:<11} {dense_ms:>9.1f} {helper_ms:>10.1f} {statistics.median(same):>15.2f} "
      f"{min(same):>5.2f}-{max(same):.2f} {statistics.median(plain):>24.2f}"
    )


if __name__ == "__main__":
  main()
