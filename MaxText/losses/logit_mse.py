"""Mean squared error between student and teacher logits (`kd_divergence=mse`), float32.

The simplest output-matching loss (Ba & Caruana 2014; Kim et al. 2021 compare it with KL): per token,
the mean over the compared vocabulary of (s_i - t_i)^2, on raw logits, so the student matches the
teacher's logit levels as well as their differences. With top-k / top-p pruning the mean runs over the
teacher's kept tokens only. Temperature has no place in it: the assembly's T^2 x MSE(s / T, t / T) is
MSE(s, t) whatever T, so the config refuses a kd_temperature other than 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def logit_mse(student_NxV: jax.Array, teacher_NxV: jax.Array, kept_NxV: jax.Array | None = None) -> jax.Array:
  """Per-token mean of (student - teacher)^2 over the vocabulary, or over the kept tokens (0/1 weights)."""
  diff = student_NxV.astype(jnp.float32) - jax.lax.stop_gradient(teacher_NxV).astype(jnp.float32)
  if kept_NxV is None:
    return jnp.mean(jnp.square(diff), axis=-1)
  return jnp.sum(jnp.square(diff) * kept_NxV, axis=-1) / jnp.maximum(jnp.sum(kept_NxV, axis=-1), 1.0)
