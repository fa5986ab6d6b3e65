"""Feature-level distillation: align the student's attention outputs to the teacher's.

The features are each layer's attention output after its output projection, before the residual
add, collected by the decoder in the same forward pass (scanned or looped). With `kd_beta` at 0 the
decoder is never asked for them, so the compiled step is the logit-only one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from MaxText import pyconfig

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


def feature_loss_sum(config, student_features, teacher_features, projection, weights_N) -> jax.Array:
  """Token-weighted sum over tokens of the per-token feature loss (mean over aligned layers).

  `student_features` / `teacher_features`: [layers, B, L, D] attention outputs of every layer;
  `projection`: [aligned, D_student, D_teacher] or None (equal widths compared directly).
  """
  pairs = pyconfig.feature_layer_pairs(dataclasses.asdict(config))
  student_idx = jnp.array([s for s, _ in pairs])
  teacher_idx = jnp.array([t for _, t in pairs])
  s = student_features[student_idx]
  t = jax.lax.stop_gradient(teacher_features[teacher_idx])
  if projection is not None:
    s = jnp.einsum("nbld,nde->nble", s, projection.astype(s.dtype), preferred_element_type=jnp.float32)
  per_layer = jax.vmap(
    lambda x, y: feature_distance(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), config.kd_feature_loss_type)
  )(s, t)
  return jnp.sum(jnp.mean(per_layer, axis=0) * weights_N)
