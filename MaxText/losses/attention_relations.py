"""MiniLM-v2 self-attention relation distillation, computed from the q / k / v projections.

For one layer of each model and each of queries, keys and values, the heads are concatenated and
re-split into R relation heads (R the same in both models, so teacher and student may differ in head
count and width); per relation head the relation of position i to position j is
softmax_j(a_i . a_j / sqrt(d_r)) over the positions i attends to (causal, same packed segment), and the
loss per query token is KL(teacher relation || student relation), averaged over the relation heads and
summed over the three kinds (Wang et al. 2021). Why relations rather than attention maps: the attention
kernels (flash, splash, cuDNN) never materialise the [L, L] maps, and their backward passes never need
them, so matching maps would mean giving those kernels up; the relations are built here from the
projections the layer computes anyway, outside the kernels, a block of query positions at a time,
each block recomputed in the backward pass, so [B, R, block, L] is the most that is ever alive.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from MaxText.losses.targets import FLOAT_MIN


def _split_heads(x_BxLxW: jax.Array, heads: int) -> jax.Array:
  """[B, L, W] -> [B, R, L, W / R], float32."""
  b, length, width = x_BxLxW.shape
  return x_BxLxW.astype(jnp.float32).reshape(b, length, heads, width // heads).transpose(0, 2, 1, 3)


def _log_relations(queries_BxRxCxd, all_BxRxLxd, visible_BxCxL):
  scores = jnp.einsum("brcd,brld->brcl", queries_BxRxCxd, all_BxRxLxd) / math.sqrt(all_BxRxLxd.shape[-1])
  return jax.nn.log_softmax(jnp.where(visible_BxCxL[:, None], scores, FLOAT_MIN), axis=-1)


def relation_kl(student_BxLxW, teacher_BxLxW, segment_ids_BxL, heads: int, query_chunk: int = 0) -> jax.Array:
  """[B, L] per query token: KL(teacher relation || student relation), mean over the `heads` relation heads.

  A position always sees itself (so padding rows stay finite; their token weight is 0)."""
  s_BxRxLxd = _split_heads(student_BxLxW, heads)
  t_BxRxLxd = jax.lax.stop_gradient(_split_heads(teacher_BxLxW, heads))
  length = s_BxRxLxd.shape[2]
  chunk = query_chunk if 0 < query_chunk < length else length

  def block(start):
    rows_C = start + jnp.arange(chunk)
    seg_BxC = jax.lax.dynamic_slice_in_dim(segment_ids_BxL, start, chunk, axis=1)
    visible_BxCxL = (seg_BxC[:, :, None] == segment_ids_BxL[:, None, :]) & (rows_C[:, None] >= jnp.arange(length))
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=2)
    log_s = _log_relations(take(s_BxRxLxd), s_BxRxLxd, visible_BxCxL)
    log_t = _log_relations(take(t_BxRxLxd), t_BxRxLxd, visible_BxCxL)
    kl_BxRxC = jnp.sum(jnp.where(visible_BxCxL[:, None], jnp.exp(log_t) * (log_t - log_s), 0.0), axis=-1)
    return jnp.mean(kl_BxRxC, axis=1)

  if chunk == length:
    return block(0)
  per_block_NxBxC = jax.lax.map(jax.checkpoint(block), jnp.arange(0, length, chunk))
  return jnp.moveaxis(per_block_NxBxC, 0, 1).reshape(segment_ids_BxL.shape)


def relation_loss(student_qkv, teacher_qkv, segment_ids_BxL, heads: int, query_chunk: int = 0) -> jax.Array:
  """[B, L]: the q-q, k-k and v-v relation KLs of one layer pair, summed."""
  return sum(
    relation_kl(s, t, segment_ids_BxL, heads, query_chunk) for s, t in zip(student_qkv, teacher_qkv, strict=True)
  )
