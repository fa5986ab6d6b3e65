"""Why speculative decoding pays or not on this machine: the costs a round is made of, side by side.

  .venv/bin/python benchmarks/speculative_costs.py --target TARGET_CKPT --draft DRAFT_CKPT [--k 4] [--rounds 5]

Both models KV-cached and jitted at batch 1 and 32, a 64-token context: the target's forward of 1 token
and of k + 1 tokens (the verification), and the draft's forward of 1 token. A round of k proposals costs
k draft steps + one verification and commits (1 - a^(k+1)) / (1 - a) tokens on average at acceptance a;
plain decoding commits 1 token per target step. Medians of interleaved rounds, min-max shown.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from MaxText import pyconfig  # noqa: E402
from MaxText.config.saved_files import saved_model_keys  # noqa: E402
from MaxText.config.views import MODEL_KEYS  # noqa: E402
from MaxText.model import decoder, kv_cache  # noqa: E402
from MaxText.model.params_io import load_params  # noqa: E402

CONTEXT = 64


def load_checkpoint(path: str):
  """A checkpoint folder's model (its saved model keys), float32, on one device."""
  keys = {k: v for k, v in saved_model_keys(path)[1].items() if k in MODEL_KEYS}
  config = pyconfig.from_dict({**keys, "dtype": "float32"})
  graphdef, abstract, _ = decoder.split_params(decoder.abstract_model(config))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return decoder.bind(graphdef, load_params(path, abstract, jax.tree.map(lambda _: device, abstract)))


def _step_fn(model, batch: int, tokens: int):
  """A jitted forward of `tokens` new tokens after a CONTEXT-token cache, logits included."""
  cache = kv_cache.init_cache(model.config, batch, CONTEXT + tokens + 1)
  positions = jnp.broadcast_to(jnp.arange(CONTEXT), (batch, CONTEXT))
  cache = kv_cache.extend(model, jnp.ones((batch, CONTEXT), jnp.int32), positions, cache)[1]
  new_positions = CONTEXT + jnp.broadcast_to(jnp.arange(tokens), (batch, tokens))

  @jax.jit
  def step(cache, ids):
    hidden, cache = kv_cache.extend(model, ids, new_positions, cache)
    return kv_cache.logits_of(model, hidden.reshape(batch * tokens, -1)), cache

  ids = jnp.ones((batch, tokens), jnp.int32)
  jax.block_until_ready(step(cache, ids))
  return lambda: jax.block_until_ready(step(cache, ids))


def _time(fn, calls: int = 10) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--target", required=True)
  p.add_argument("--draft", required=True)
  p.add_argument("--k", type=int, default=4)
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args()
  target, draft = load_checkpoint(args.target), load_checkpoint(args.draft)
  for batch in (1, 32):
    fns = {
      "target, 1 token": _step_fn(target, batch, 1),
      f"target, {args.k + 1} tokens (verification)": _step_fn(target, batch, args.k + 1),
      "draft, 1 token": _step_fn(draft, batch, 1),
    }
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
      for name, fn in fns.items():
        times[name].append(_time(fn) * 1e3)
    print(f"\nbatch {batch}, {CONTEXT}-token context, ms per call (median, min-max of {args.rounds} rounds):")
    med = {name: float(np.median(t)) for name, t in times.items()}
    for name, t in times.items():
      print(f"  {name:40s} {med[name]:8.2f} ({min(t):.2f}-{max(t):.2f})")
    one, verify, step = (
      med["target, 1 token"],
      med[f"target, {args.k + 1} tokens (verification)"],
      med["draft, 1 token"],
    )
    round_cost = args.k * step + verify
    print(f"  a round of {args.k}: {round_cost:.2f} ms = {round_cost / one:.2f} target steps; speed-up over plain at")
    for a in (0.4, 0.6, 0.8, 0.9):
      committed = (1 - a ** (args.k + 1)) / (1 - a)
      print(f"    acceptance {a}: {committed:.2f} tokens a round -> {committed * one / round_cost:.2f}x")


if __name__ == "__main__":
  main()
