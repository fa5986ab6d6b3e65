"""Feature-level distillation: the student's learned projection head and the feature term.

The features (`kd_feature_source`) are each layer's attention output after its output projection,
before the residual add; or the residual stream after each layer, the embedding output first; or each
layer's pre-RoPE q / k / v projections, compared as MiniLM-v2 attention relations
(losses/attention_relations.py). The decoder collects them in the same forward pass (scanned or
looped). The projection from student to teacher width (attention_output, residual) is a parameter
collection of its own (`kd_head`), trained and checkpointed with the student but never part of the
decoder: plain checkpoints load into a feature-KD run, and the decoder's parameters export as they are.
With `kd_beta` at 0 there is no head and the decoder is never asked for features, so the compiled step
is the logit-only one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from MaxText.config.views import FeatureAlignment
from MaxText.losses.attention_relations import relation_loss
from MaxText.losses.features import feature_distance

PROJECTION = "kd_projection"
_HEAD_SEED_OFFSET = 0x6B64  # folds the run's seed, so the head's init never reuses the decoder's stream


def head_logical_axes() -> dict:
  return {PROJECTION: ("layers", "embed", None)}


def init_head(alignment: FeatureAlignment, seed: int, weight_dtype: str) -> dict:
  """A fresh head: normal(0, 1 / sqrt(student width)) per aligned layer, a pure function of the seed."""
  shape = alignment.projection_shape
  key = jax.random.fold_in(jax.random.key(seed), _HEAD_SEED_OFFSET)
  projection = shape[1] ** -0.5 * jax.random.normal(key, shape, jnp.float32)
  return {PROJECTION: projection.astype(jnp.dtype(weight_dtype))}


def abstract_head(alignment: FeatureAlignment, weight_dtype: str) -> dict:
  return {PROJECTION: jax.ShapeDtypeStruct(alignment.projection_shape, jnp.dtype(weight_dtype))}


DECODER_FEATURES = {"attention_output": "attention_output", "residual": "residual", "attention_relations": "qkv"}


def decoder_features(alignment: FeatureAlignment | None) -> str | None:
  """What the decoders are asked for (Decoder.__call__'s `features`), None without a feature term."""
  return DECODER_FEATURES[alignment.source] if alignment is not None else None


def feature_loss_sum(alignment: FeatureAlignment, student_features, teacher_features, projection, weights_N, segments):
  """Token-weighted sum over tokens of the per-token feature loss (mean over aligned layers).

  `student_features` / `teacher_features`: what the decoders returned for `decoder_features(alignment)`
  ([layers, B, L, D]; residual: [layers + 1, ...], the embedding output first; qkv: a triple);
  `projection`: [aligned, D_student, D_teacher] or None (equal widths compared directly, or relations);
  `segments`: [B, L] segment ids (relations attend within a segment only).
  """
  offset = 1 if alignment.source == "residual" else 0  # the residual stack starts with the embedding output
  pick = lambda feats, layers: jax.tree.map(lambda f: f[jnp.array(layers) + offset], feats)
  s = pick(student_features, alignment.student_layers)
  t = jax.lax.stop_gradient(pick(teacher_features, alignment.teacher_layers))
  if alignment.source == "attention_relations":
    relations = lambda s_qkv, t_qkv: relation_loss(
      s_qkv, t_qkv, segments, alignment.relation_heads, alignment.relation_query_chunk
    ).reshape(-1)
    return jnp.sum(jnp.mean(jax.vmap(relations)(s, t), axis=0) * weights_N)
  if projection is not None:
    s = jnp.einsum("nbld,nde->nble", s, projection.astype(s.dtype), preferred_element_type=jnp.float32)
  per_layer = jax.vmap(
    lambda x, y: feature_distance(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), alignment.loss_type)
  )(s, t)
  return jnp.sum(jnp.mean(per_layer, axis=0) * weights_N)
