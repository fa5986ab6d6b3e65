"""Loss numerics: float32 cross-entropy and the token-chunked evaluation of per-token losses.

Per-token losses never need the full [batch x length x vocab] logits: `chunked_sums` slices the
tokens into chunks, projects each chunk to the vocabulary inside a rematerialised scan body, and
returns only summed scalars, so loss memory is set by `loss_chunk_size`, not by batch x length.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def cross_entropy_with_logits(logits_NxV: jax.Array, targets_N: jax.Array, z_loss: float = 0.0):
  """Per-token cross-entropy against integer targets, and the z-loss term, both float32.

  Returns (loss_N, z_loss_N); loss_N already includes z_loss_N (z_loss * logsumexp^2).
  """
  logits = logits_NxV.astype(jnp.float32)
  log_z_N = jax.nn.logsumexp(logits, axis=-1)
  target_logit_N = jnp.take_along_axis(logits, targets_N[..., None].astype(jnp.int32), axis=-1)[..., 0]
  z_term_N = z_loss * jnp.square(log_z_N)
  return log_z_N - target_logit_N + z_term_N, z_term_N


def project_logits(hidden_NxD: jax.Array, w_DxV: jax.Array) -> jax.Array:
  """Output projection with float32 accumulation and result."""
  return jnp.einsum("nd,dv->nv", hidden_NxD, w_DxV.astype(hidden_NxD.dtype), preferred_element_type=jnp.float32)


def _pad_rows(x: jax.Array, rows: int) -> jax.Array:
  pad = rows - x.shape[0]
  return x if pad == 0 else jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def chunked_sums(chunk_fn: Callable[..., dict], per_token: dict, shared: dict, chunk_size: int) -> dict:
  """Sums `chunk_fn(per_token_chunk, shared)` over token chunks.

  `per_token` holds arrays with a leading token axis N (hidden states, targets, weights, ...);
  rows added to fill the last chunk are zero, so `chunk_fn` must weight every term by the
  `weights` entry. `shared` (e.g. the unembedding matrix) is passed whole to each chunk. The body
  is rematerialised, so the backward pass also holds one chunk of logits at a time.
  """
  n = jax.tree.leaves(per_token)[0].shape[0]
  chunk = min(chunk_size, n)
  num_chunks = -(-n // chunk)
  chunked = jax.tree.map(lambda x: _pad_rows(x, num_chunks * chunk).reshape(num_chunks, chunk, *x.shape[1:]), per_token)
  if num_chunks == 1:  # one chunk is the memory budget anyway: no need to recompute it in the backward pass
    return chunk_fn(jax.tree.map(lambda x: x[0], chunked), shared)
  body = jax.checkpoint(lambda xs: chunk_fn(xs, shared), policy=jax.checkpoint_policies.nothing_saveable)

  def step(total, xs):
    return jax.tree.map(jnp.add, total, body(xs)), None

  first = body(jax.tree.map(lambda x: x[0], chunked))
  total, _ = jax.lax.scan(step, first, jax.tree.map(lambda x: x[1:], chunked))
  return total


def ce_chunk_sums(xs: dict, shared: dict, z_loss: float) -> dict:
  """Summed CE, z-loss and token count of one chunk (hidden states projected here)."""
  logits = project_logits(xs["hidden"], shared["w_DxV"])
  loss_N, z_N = cross_entropy_with_logits(logits, xs["targets"], z_loss)
  weights = xs["weights"]
  return {"ce_sum": jnp.sum((loss_N - z_N) * weights), "z_loss_sum": jnp.sum(z_N * weights), "tokens": jnp.sum(weights)}
