"""The decoder run incrementally over a key/value cache: prefill and one-token decode steps.

The cache holds every layer's keys and values at each slot of a row, slot = position: [layers, B, S, G, K].
`extend` runs new tokens at given positions through the same layer math as training (`layers.project_qkv`,
`layers.mlp_block`), writes their keys and values into their slots, and lets each new token attend to
the slots at or before its position. Prompts of different lengths share one batch right-padded: a row's
padding slots are written by the prefill but never visible to its real tokens, and are overwritten one
by one as that row's generated tokens take those positions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from MaxText.model import layers
from MaxText.model.attention import MASK_VALUE


class KVCache(NamedTuple):
  key_NxBxSxGxK: jax.Array  # N = layers, S = slots (the longest prompt + the new tokens)
  value_NxBxSxGxK: jax.Array


def init_cache(config, batch: int, slots: int) -> KVCache:
  shape = (config.num_decoder_layers, batch, slots, config.num_kv_heads, config.head_dim)
  zeros = jnp.zeros(shape, jnp.dtype(config.dtype))
  return KVCache(zeros, zeros)


def _write(cache_BxSxGxK, new_BxTxGxK, positions_BxT):
  rows = jnp.arange(cache_BxSxGxK.shape[0])[:, None]
  return cache_BxSxGxK.at[rows, positions_BxT].set(new_BxTxGxK.astype(cache_BxSxGxK.dtype))


def cached_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, positions_BxT) -> jax.Array:
  """Each query attends to the slots at or before its position; float32 softmax, as `dot_product`."""
  batch, length, heads, dim = q_BxTxHxK.shape
  groups = k_BxSxGxK.shape[2]
  q = q_BxTxHxK.reshape(batch, length, groups, heads // groups, dim)
  scores = jnp.einsum("btgrk,bsgk->bgrts", q, k_BxSxGxK, preferred_element_type=jnp.float32) / math.sqrt(dim)
  visible_BxTxS = jnp.arange(k_BxSxGxK.shape[1])[None, None, :] <= positions_BxT[:, :, None]
  probs = jax.nn.softmax(jnp.where(visible_BxTxS[:, None, None], scores, MASK_VALUE), axis=-1)
  out = jnp.einsum("bgrts,bsgk->btgrk", probs.astype(v_BxSxGxK.dtype), v_BxSxGxK)
  return out.reshape(batch, length, heads, dim)


def _layer(p: dict, x_BxTxD, positions_BxT, k_cache, v_cache, inv_freq, config):
  h = layers.rms_norm(x_BxTxD, p["attn_norm"], config.normalization_layer_epsilon)
  q, k, v = layers.project_qkv(p, h, positions_BxT, inv_freq, config)
  k_cache, v_cache = _write(k_cache, k, positions_BxT), _write(v_cache, v, positions_BxT)
  attended = cached_attention(q, k_cache, v_cache, positions_BxT)
  x_BxTxD = x_BxTxD + jnp.einsum("blhk,hkd->bld", attended, p["out"].astype(x_BxTxD.dtype))
  x_BxTxD = x_BxTxD + layers.mlp_block(p, x_BxTxD, config)[2]
  return x_BxTxD, k_cache, v_cache


def extend(model, tokens_BxT, positions_BxT, cache: KVCache) -> tuple[jax.Array, KVCache]:
  """(final hidden states [B, T, D] of the new tokens, the cache with their keys and values written)."""
  config = model.config
  x = jnp.take(model.token_embedder[...], tokens_BxT, axis=0).astype(jnp.dtype(config.dtype))
  inv_freq = layers.rope_inverse_frequencies(config)

  def body(x_BxTxD, weights_and_cache):
    weights, k_cache, v_cache = weights_and_cache
    x_BxTxD, k_cache, v_cache = _layer(weights, x_BxTxD, positions_BxT, k_cache, v_cache, inv_freq, config)
    return x_BxTxD, (k_cache, v_cache)

  x, (keys, values) = jax.lax.scan(body, x, (model.layers.weights(), cache.key_NxBxSxGxK, cache.value_NxBxSxGxK))
  hidden = layers.rms_norm(x, model.final_norm[...], config.normalization_layer_epsilon)
  return hidden, KVCache(keys, values)


def logits_of(model, hidden_BxD) -> jax.Array:
  """float32 logits of one hidden state per row (the full vocabulary: generation samples from it)."""
  return hidden_BxD.astype(jnp.float32) @ model.output_matrix_DxV().astype(jnp.float32)
