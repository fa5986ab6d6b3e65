"""Per-token distances between student and teacher features (the feature-alignment term)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_TINY = 1e-12


def feature_distance(student_NxD: jax.Array, teacher_NxD: jax.Array, kind: str) -> jax.Array:
  """Per-token distance in float32: cosine distance (1 - cos) or the mean squared difference.

  Norms are floored so a zero feature (padding) gives a finite value and a zero, not NaN, gradient.
  """
  a, b = student_NxD.astype(jnp.float32), teacher_NxD.astype(jnp.float32)
  if kind == "cosine":
    norm_a = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=-1), _TINY))
    norm_b = jnp.sqrt(jnp.maximum(jnp.sum(b * b, axis=-1), _TINY))
    return 1.0 - jnp.sum(a * b, axis=-1) / (norm_a * norm_b)
  return jnp.mean(jnp.square(a - b), axis=-1)
