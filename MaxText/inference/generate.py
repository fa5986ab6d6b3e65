"""Batched generation: one prefill of the right-padded prompts, then a KV-cached decode step per token.

`generate` is a pure function (jit it with the parameters' shardings); `generate_without_cache` is the
reference that reruns the whole sequence for every token, for tests and the benchmark.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from MaxText.inference.sampling import Sampling, sample
from MaxText.model import kv_cache


class Generated(NamedTuple):
  tokens_BxN: jax.Array  # generated ids; after a row's stop token (kept) the rest is `pad_id`
  lengths_B: jax.Array  # generated tokens per row, its stop token included


def _finish(tokens_BxN, pad_id: int, stop_ids: tuple[int, ...]) -> Generated:
  """Pads everything after each row's first stop token and counts what is left."""
  is_stop = jnp.isin(tokens_BxN, jnp.asarray(stop_ids or (-1,), jnp.int32))
  after_stop = (jnp.cumsum(is_stop, axis=1) - is_stop) > 0
  tokens = jnp.where(after_stop, pad_id, tokens_BxN)
  return Generated(tokens, jnp.sum(~after_stop, axis=1).astype(jnp.int32))


def generate(
  model, prompt_BxP, prompt_lengths_B, key, sampling: Sampling, max_new_tokens: int, stop_ids=(), pad_id: int = 0
) -> Generated:
  """Continues each row's first `prompt_lengths_B` tokens by up to `max_new_tokens` tokens."""
  batch, prompt_len = prompt_BxP.shape
  rows = jnp.arange(batch)
  cache = kv_cache.init_cache(model.config, batch, prompt_len + max_new_tokens)
  positions = jnp.broadcast_to(jnp.arange(prompt_len), (batch, prompt_len))
  hidden, cache = kv_cache.extend(model, prompt_BxP, positions, cache)
  logits = kv_cache.logits_of(model, hidden[rows, prompt_lengths_B - 1])
  stops = jnp.asarray(stop_ids or (-1,), jnp.int32)

  def not_finished(state):
    step, _, _, _, done, _ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def decode_one(state):
    step, logits, cache, out, done, key = state
    key, subkey = jax.random.split(key)
    token = jnp.where(done, pad_id, sample(logits, subkey, sampling))
    out = out.at[:, step].set(token)
    hidden, cache = kv_cache.extend(model, token[:, None], (prompt_lengths_B + step)[:, None], cache)
    done = done | jnp.isin(token, stops)
    return step + 1, kv_cache.logits_of(model, hidden[:, 0]), cache, out, done, key

  out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
  state = (jnp.int32(0), logits, cache, out, jnp.zeros(batch, bool), key)
  out = jax.lax.while_loop(not_finished, decode_one, state)[3]
  return _finish(out, pad_id, tuple(stop_ids))


def generate_without_cache(
  model, prompt_BxP, prompt_lengths_B, key, sampling: Sampling, max_new_tokens: int, stop_ids=(), pad_id: int = 0
) -> Generated:
  """The same tokens as `generate`, each step rerunning the decoder over the whole (fixed-size) buffer."""
  batch, prompt_len = prompt_BxP.shape
  rows = jnp.arange(batch)
  buffer = jnp.concatenate([prompt_BxP, jnp.full((batch, max_new_tokens), pad_id, prompt_BxP.dtype)], axis=1)

  def decode_one(step, state):
    buffer, done, key = state
    key, subkey = jax.random.split(key)
    logits = model.logits(buffer)[rows, prompt_lengths_B + step - 1]
    token = jnp.where(done, pad_id, sample(logits, subkey, sampling))
    buffer = buffer.at[rows, prompt_lengths_B + step].set(token)
    return buffer, done | jnp.isin(token, jnp.asarray(stop_ids or (-1,), jnp.int32)), key

  buffer, _, _ = jax.lax.fori_loop(0, max_new_tokens, decode_one, (buffer, jnp.zeros(batch, bool), key))
  generated = buffer[rows[:, None], prompt_lengths_B[:, None] + jnp.arange(max_new_tokens)[None, :]]
  return _finish(generated, pad_id, tuple(stop_ids))
