"""Divergences between a teacher and a student whose vocabularies differ.

- `uld_distance`: Universal Logit Distillation (Boizard et al. 2024): the L1 distance between the two
  probability vectors at T, each sorted in decreasing order, the shorter padded with zeros. It needs no
  token correspondence.
- `projected_target`: the teacher's distribution at T carried into the student's vocabulary: a token
  whose string both vocabularies hold keeps its probability, any other teacher token gives its
  probability to the student token its text starts with (token_alignment.teacher_to_student), so the
  target is the teacher's distribution over how the continuation starts in the student's tokens. Its
  forward KL (losses/divergences.kd_divergence) is the exact-match term; with one tokenizer on both
  sides the map is the identity and it is the same-tokenizer forward KL.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from MaxText.losses.targets import FLOAT_MIN, TeacherTarget, _teacher_probs


def _sorted_descending(p_NxV: jax.Array) -> jax.Array:
  return -jnp.sort(-p_NxV, axis=-1)


def uld_distance(student_logits_NxVs: jax.Array, teacher_logits_NxVt: jax.Array, temperature) -> jax.Array:
  """Per-token sum_r |p_(r) - q_(r)| over the ranks r of both distributions at T (zeros past the shorter)."""
  q_NxVs = jax.nn.softmax(student_logits_NxVs.astype(jnp.float32) / temperature, axis=-1)
  p_NxVt, _ = _teacher_probs(teacher_logits_NxVt, temperature)
  q_sorted, p_sorted = _sorted_descending(q_NxVs), _sorted_descending(p_NxVt)
  common = min(q_sorted.shape[-1], p_sorted.shape[-1])
  # past the shorter vector the other is compared with zeros: its tail mass
  tails = jnp.sum(q_sorted[:, common:], axis=-1) + jnp.sum(p_sorted[:, common:], axis=-1)
  return jnp.sum(jnp.abs(p_sorted[:, :common] - q_sorted[:, :common]), axis=-1) + tails


def projected_target(teacher_logits_NxVt, teacher_to_student_Vt, student_vocab: int, temperature) -> TeacherTarget:
  """The teacher's distribution at T over the student's next token: each teacher token's probability goes
  to the student token its text starts with (token_alignment.teacher_to_student; a shared string goes
  to itself), renormalised over the mapped tokens (only specials the student lacks are unmapped).
  `mass_kept_N` is the teacher's mass on strings both vocabularies hold."""
  p_NxVt, _ = _teacher_probs(teacher_logits_NxVt, temperature)
  mapped_Vt = teacher_to_student_Vt >= 0
  columns_Vt = jnp.where(mapped_Vt, teacher_to_student_Vt, 0)
  target_NxVs = jnp.zeros((p_NxVt.shape[0], student_vocab), jnp.float32).at[:, columns_Vt].add(p_NxVt * mapped_Vt)
  total_N = jnp.sum(target_NxVs, axis=-1, keepdims=True)
  target_NxVs = target_NxVs / total_N
  log_target_NxVs = jnp.where(target_NxVs > 0, jnp.log(jnp.maximum(target_NxVs, 1e-38)), FLOAT_MIN)
  return TeacherTarget(target_NxVs, log_target_NxVs, None, None, total_N[:, 0])


def shared_mass(teacher_logits_NxVt, teacher_to_student_Vt, student_to_teacher_Vs) -> jax.Array:
  """The teacher's probability (T = 1) on tokens whose string the student's vocabulary also holds."""
  p_NxVt, _ = _teacher_probs(teacher_logits_NxVt, 1.0)
  back_Vt = jnp.take(student_to_teacher_Vs, jnp.maximum(teacher_to_student_Vt, 0))
  shared_Vt = ((teacher_to_student_Vt >= 0) & (back_Vt == jnp.arange(p_NxVt.shape[-1]))).astype(jnp.float32)
  return jnp.sum(p_NxVt * shared_Vt, axis=-1)
