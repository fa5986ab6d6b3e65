"""Generation speed: KV-cached `generate` against rerunning the whole sequence for every token.

  .venv/bin/python benchmarks/decode.py [--new_tokens 256] [--batch 4] [--prompt 64] [--repeats 3]

One process, both loops jitted and warmed up, the same random model (the demo student's shape by
default: width 256, 4 layers, vocab 32768) and prompts; greedy, no stop tokens, so both produce exactly
`new_tokens` tokens per row. Prints prefill tokens/s (one forward over the prompts), decode tokens/s of
each loop and the speed-up, median of `repeats` with the spread, and the processor.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.kd_loss import processor  # noqa: E402
from MaxText import pyconfig  # noqa: E402
from MaxText.inference.generate import generate, generate_without_cache  # noqa: E402
from MaxText.inference.sampling import Sampling  # noqa: E402
from MaxText.model import decoder, kv_cache  # noqa: E402

MODEL = {"emb_dim": 256, "num_decoder_layers": 4, "num_query_heads": 8, "num_kv_heads": 4, "head_dim": 32}


def _seconds(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--new_tokens", type=int, default=256)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--prompt", type=int, default=64)
  parser.add_argument("--vocab", type=int, default=32768)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  keys = {"model_name": "default", "dtype": "float32", "vocab_size": args.vocab, "mlp_dim": 1024, **MODEL}
  config = pyconfig.from_dict(keys)
  graphdef, params, _ = decoder.split_params(decoder.Decoder(config, nnx.Rngs(0)))
  prompts = jnp.asarray(np.random.default_rng(0).integers(3, args.vocab, (args.batch, args.prompt)), jnp.int32)
  lengths = jnp.full((args.batch,), args.prompt, jnp.int32)
  n, key = args.new_tokens, jax.random.key(0)

  def prefill(p, tokens):
    model = decoder.bind(graphdef, p)
    cache = kv_cache.init_cache(model.config, args.batch, args.prompt + n)
    return kv_cache.extend(model, tokens, jnp.broadcast_to(jnp.arange(args.prompt), tokens.shape), cache)[0]

  loops = {
    "KV cache": jax.jit(lambda p, t, lens: generate(decoder.bind(graphdef, p), t, lens, key, Sampling(), n)),
    "no cache": jax.jit(
      lambda p, t, lens: generate_without_cache(decoder.bind(graphdef, p), t, lens, key, Sampling(), n)
    ),
  }
  prefill = jax.jit(prefill)
  jax.block_until_ready(prefill(params, prompts))
  outputs = [np.asarray(fn(params, prompts, lengths).tokens_BxN) for fn in loops.values()]
  same = np.array_equal(*outputs)
  times = {"prefill": [], **{name: [] for name in loops}}
  for _ in range(args.repeats):
    times["prefill"].append(_seconds(prefill, params, prompts))
    for name, fn in loops.items():
      times[name].append(_seconds(fn, params, prompts, lengths))
  print(
    f"{jax.devices()[0].platform} ({processor()}), {config.emb_dim} wide x {config.num_decoder_layers} layers, "
    f"vocab {args.vocab}"
  )
  print(f"batch {args.batch}, prompt {args.prompt} tokens, {n} new tokens per row, median of {args.repeats} (min-max)")
  prefill_rate = [args.batch * args.prompt / t for t in times["prefill"]]
  print(f"prefill: {np.median(prefill_rate):,.0f} tokens/s ({min(prefill_rate):,.0f}-{max(prefill_rate):,.0f})")
  rates = {name: [args.batch * n / t for t in times[name]] for name in loops}
  for name, rate in rates.items():
    print(f"{name:9s} generation: {np.median(rate):,.0f} tokens/s ({min(rate):,.0f}-{max(rate):,.0f})")
  ratios = [a / b for a, b in zip(times["no cache"], times["KV cache"], strict=True)]
  verdict = "the same tokens" if same else "DIFFERENT tokens"
  print(f"speed-up of the KV cache: {np.median(ratios):.1f}x ({min(ratios):.1f}-{max(ratios):.1f}); {verdict}")


if __name__ == "__main__":
  main()
