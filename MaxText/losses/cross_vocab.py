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

from MaxText.losses.targets import FLOAT_MIN, TeacherTarget, teacher_probs


def _top_descending(x_NxV: jax.Array, k: int) -> jax.Array:
  """The k largest entries of each row, largest first (differentiable: a gather of the input).

  A full sort (k = V) orders the int32 bit patterns of the non-negative probabilities, which order like
  the values: XLA's CPU sort on int32 keys ran 4x faster than on float32 here (its float comparator
  also orders NaNs); a partial one is lax.top_k (0.8 s against 5.0 s for a full float sort of 512 rows
  of 49,152, benchmarks/cross_tokenizer_step.py)."""
  vocab = x_NxV.shape[-1]
  if k < vocab:
    return jax.lax.top_k(x_NxV, k)[0]
  keys = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(x_NxV), jnp.int32)
  iota = jax.lax.broadcasted_iota(jnp.int32, x_NxV.shape, 1)
  _, order = jax.lax.sort((-keys, iota), dimension=1, num_keys=1)
  return jnp.take_along_axis(x_NxV, order, axis=1)


def uld_distance(student_logits_NxVs: jax.Array, teacher_logits_NxVt: jax.Array, temperature) -> jax.Array:
  """Per-token sum_r |p_(r) - q_(r)| over the ranks r of both distributions at T (zeros past the shorter)."""
  return uld_from_probs(student_logits_NxVs, teacher_probs(teacher_logits_NxVt, temperature)[0], temperature)


def uld_from_probs(student_logits_NxVs: jax.Array, p_NxVt: jax.Array, temperature) -> jax.Array:
  """uld_distance given the teacher's probabilities at T (computed once per chunk by the caller).

  Past rank m = min(Vs, Vt) one side is zero padding, so those ranks add the other side's mass beyond
  its top m exactly: only the top m of each side are sorted."""
  q_NxVs = jax.nn.softmax(student_logits_NxVs.astype(jnp.float32) / temperature, axis=-1)
  common = min(q_NxVs.shape[-1], p_NxVt.shape[-1])
  q_top, p_top = _top_descending(q_NxVs, common), _top_descending(p_NxVt, common)
  tails = jnp.maximum(1.0 - jnp.sum(q_top, axis=-1), 0.0) + jnp.maximum(1.0 - jnp.sum(p_top, axis=-1), 0.0)
  if common == q_NxVs.shape[-1]:  # the student side is whole: its tail is exactly 0
    tails = jnp.maximum(1.0 - jnp.sum(p_top, axis=-1), 0.0) if common < p_NxVt.shape[-1] else 0.0
  return jnp.sum(jnp.abs(p_top - q_top), axis=-1) + tails


_ULD_BLOCK = 32  # rows per block of uld_where_needed


def uld_where_needed(student_logits_NxVs, p_NxVt, temperature, needed_N) -> jax.Array:
  """uld_from_probs on the rows where `needed_N`, 0 elsewhere, at a cost that follows the needed rows.

  The needed rows are moved to the front (a stable order) and taken in blocks; a block past the last
  needed row is skipped (lax.cond), so a span-aligned mix whose ULD applies to one token in eight does
  about an eighth of the sorting. Exact: every needed row is computed as uld_distance computes it."""
  rows = needed_N.shape[0]
  order_N = jnp.argsort(jnp.logical_not(needed_N), stable=True)
  count = jnp.sum(needed_N.astype(jnp.int32))
  blocks = -(-rows // _ULD_BLOCK)
  pad = lambda x: jnp.pad(x[order_N], [(0, blocks * _ULD_BLOCK - rows), (0, 0)]).reshape(blocks, _ULD_BLOCK, -1)
  starts = jnp.arange(blocks) * _ULD_BLOCK

  def block(xs):
    start, s, t = xs
    run = lambda: uld_from_probs(s, t, temperature)
    return jax.lax.cond(start < count, run, lambda: jnp.zeros((_ULD_BLOCK,), jnp.float32))

  values = jax.lax.map(block, (starts, pad(student_logits_NxVs), pad(p_NxVt))).reshape(-1)[:rows]
  return jnp.zeros((rows,), jnp.float32).at[order_N].set(values) * needed_N


def projected_target(teacher_logits_NxVt, teacher_to_student_Vt, student_vocab: int, temperature) -> TeacherTarget:
  """The teacher's distribution at T over the student's next token: each teacher token's probability goes
  to the student token its text starts with (token_alignment.teacher_to_student; a shared string goes
  to itself), renormalised over the mapped tokens (only specials the student lacks are unmapped).
  `mass_kept_N` is the teacher's mass on strings both vocabularies hold."""
  return projected_from_probs(teacher_probs(teacher_logits_NxVt, temperature)[0], teacher_to_student_Vt, student_vocab)


def projected_from_probs(p_NxVt, teacher_to_student_Vt, student_vocab: int) -> TeacherTarget:
  """projected_target given the teacher's probabilities at T."""
  mapped_Vt = teacher_to_student_Vt >= 0
  columns_Vt = jnp.where(mapped_Vt, teacher_to_student_Vt, 0)
  # a segment sum over the teacher's vocabulary (transposed): 4x faster on CPU than a scatter-add into
  # [N, Vs] with repeated columns (benchmarks/cross_tokenizer_step.py --uld_only), the same sums
  sums_VsxN = jax.ops.segment_sum((p_NxVt * mapped_Vt).T, columns_Vt, num_segments=student_vocab)
  target_NxVs = sums_VsxN.T
  total_N = jnp.sum(target_NxVs, axis=-1, keepdims=True)
  target_NxVs = target_NxVs / total_N
  log_target_NxVs = jnp.where(target_NxVs > 0, jnp.log(jnp.maximum(target_NxVs, 1e-38)), FLOAT_MIN)
  return TeacherTarget(target_NxVs, log_target_NxVs, None, None, total_N[:, 0])


def shared_mass(p_NxVt, teacher_to_student_Vt, student_to_teacher_Vs) -> jax.Array:
  """The teacher's probability (given, at some T) on tokens whose string the student's vocabulary also holds."""
  back_Vt = jnp.take(student_to_teacher_Vs, jnp.maximum(teacher_to_student_Vt, 0))
  shared_Vt = ((teacher_to_student_Vt >= 0) & (back_Vt == jnp.arange(p_NxVt.shape[-1]))).astype(jnp.float32)
  return jnp.sum(p_NxVt * shared_Vt, axis=-1)
