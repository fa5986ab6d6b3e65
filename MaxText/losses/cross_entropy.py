"""Cross-entropy and the output projection, in float32 whatever the model's dtype."""

from __future__ import annotations

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


def ce_chunk_sums(xs: dict, shared: dict, z_loss: float) -> dict:
  """Summed CE, z-loss and token count of one chunk (hidden states projected here)."""
  logits = project_logits(xs["hidden"], shared["w_DxV"])
  loss_N, z_N = cross_entropy_with_logits(logits, xs["targets"], z_loss)
  weights = xs["weights"]
  return {"ce_sum": jnp.sum((loss_N - z_N) * weights), "z_loss_sum": jnp.sum(z_N * weights), "tokens": jnp.sum(weights)}
