"""How the next token is chosen from float32 logits: MaxText's `decode_sampling_*` rules.

greedy (argmax), weighted (softmax at the temperature), topk (the k most probable tokens, renormalised)
and nucleus (the smallest set whose mass reaches p, renormalised), each with the temperature applied
first. Ties at the top-k boundary keep exactly k tokens (the lowest ids win), as `jax.lax.top_k` does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

STRATEGIES = ("greedy", "weighted", "topk", "nucleus")


@dataclasses.dataclass(frozen=True)
class Sampling:
  strategy: str = "greedy"
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  @classmethod
  def from_config(cls, config) -> Sampling:
    return cls(
      config.decode_sampling_strategy,
      config.decode_sampling_temperature,
      config.decode_sampling_top_k,
      config.decode_sampling_nucleus_p,
    )


def _keep(logits_BxV: jax.Array, ids_BxK: jax.Array) -> jax.Array:
  """The logits at `ids` per row, -inf elsewhere."""
  rows = jnp.arange(logits_BxV.shape[0])[:, None]
  kept = jnp.zeros(logits_BxV.shape, bool).at[rows, ids_BxK].set(True)
  return jnp.where(kept, logits_BxV, -jnp.inf)


def nucleus_logits(x_BxV: jax.Array, top_p: float) -> jax.Array:
  """Keeps a token while the mass of the more probable tokens before it (in sorted order) is < top_p."""
  order_BxV = jnp.argsort(-x_BxV, axis=-1, stable=True)
  probs_sorted = jnp.take_along_axis(jax.nn.softmax(x_BxV, axis=-1), order_BxV, axis=-1)
  before = jnp.cumsum(probs_sorted, axis=-1) - probs_sorted
  keep_sorted = before < top_p
  rows = jnp.arange(x_BxV.shape[0])[:, None]
  kept = jnp.zeros(x_BxV.shape, bool).at[rows, order_BxV].set(keep_sorted)
  return jnp.where(kept, x_BxV, -jnp.inf)


def truncated_logits(logits_BxV: jax.Array, sampling: Sampling) -> jax.Array:
  """The logits a sampled token is drawn from: divided by the temperature, -inf outside the kept set."""
  x = logits_BxV.astype(jnp.float32) / sampling.temperature
  if sampling.strategy == "topk":
    return _keep(x, jax.lax.top_k(x, sampling.top_k)[1])
  if sampling.strategy == "nucleus":
    return nucleus_logits(x, sampling.top_p)
  return x


def sample(logits_BxV: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  """[B] int32 next tokens."""
  if sampling.strategy == "greedy":
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, truncated_logits(logits_BxV, sampling), axis=-1).astype(jnp.int32)
