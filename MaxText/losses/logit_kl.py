"""Forward KL to a live teacher from its logits, pruned or not, without the target's [N, V] arrays.

`kd_divergence` takes a dense `TeacherTarget`: target probabilities, their logs and (pruned) a mask, each
an [N, V] array written in the forward pass and read again in the backward pass. Here the teacher's p is
recomputed from its logits and a few numbers per row wherever it is needed: on CPU, writing and
re-reading those arrays costs more than the exps. The definitions are `teacher_target`'s:
- unpruned: KL = sum_i p_i (log p_i - log q_i), gradient (q - p) / T;
- pruned to a kept set K (top-k: the k largest teacher logits; top-p: the nucleus of p, `top_p_mask`'s
  cut), renormalised: p~ = p / P_K on K, KL = sum_K p~ (log p~ - log q), gradient (q - p~) / T;
- with the OTHER bucket: KL = sum_K p (log p - log q) + P_o (log P_o - log Q_o), P_o and Q_o the teacher's
  and the student's mass outside K, gradient (q - [K] p - [not K] P_o q / Q_o) / T.
The gradients take the target's total mass as 1 where `kd_divergence` multiplies q by its float sum: the
two agree within float32 rounding (tests/test_kd_loss.py). Top-k keeps exactly k tokens, ties broken by
index; a chunk with a tie at some row's k-th logit takes the dense path, which breaks it that way.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from MaxText.losses.divergences import _weighted_logsumexp, kd_divergence
from MaxText.losses.targets import FLOAT_MIN, _nucleus_cut, _nucleus_cut_in_blocks, teacher_target


class _Teacher(NamedTuple):
  """The per-row numbers the teacher's p, and the kept set, are recomputed from (no gradient)."""

  max_N: jax.Array  # max of teacher / T
  log_total_N: jax.Array  # log sum exp(teacher / T - max)
  origin_N: jax.Array  # top-p: the row's largest log p (distances are measured from it); else unused
  limit_N: jax.Array  # top-k: the k-th largest logit; top-p: the largest distance kept; else unused
  log_mass_N: jax.Array  # log P_K (renormalised) or log P_o (OTHER bucket); else unused


def _max_and_log_total(x_NxV):
  """Each row's max and log sum exp(x - max): kept apart, so that x - max - log total stays as precise
  as softmax's own (summing them first rounds at the max's magnitude)."""
  max_N = jnp.max(x_NxV, axis=-1)
  return max_N, jnp.log(jnp.sum(jnp.exp(x_NxV - max_N[:, None]), axis=-1))


def _log_p(teacher_NxV, temperature, max_N, log_total_N):
  """The teacher's log-probabilities at T, clamped to the float32 minimum as `teacher_target`'s are."""
  shifted = teacher_NxV.astype(jnp.float32) / temperature - max_N[:, None]
  return jnp.maximum(shifted - log_total_N[:, None], FLOAT_MIN)


def _kept(rule: str, teacher_NxV, log_p_NxV, t: _Teacher):
  """1.0 on the kept teacher tokens of each row, else 0.0."""
  if rule == "top_k":
    return (teacher_NxV.astype(jnp.float32) >= t.limit_N[:, None]).astype(jnp.float32)
  return ((t.origin_N[:, None] - log_p_NxV) <= t.limit_N[:, None]).astype(jnp.float32)


def _terms(rule: str, with_other: bool, student_NxV, teacher_NxV, temperature, s_lse_N, t: _Teacher):
  """(x = student / T, log q, target weight w, log w, kept) elementwise: w is p (unpruned, or on K with the
  bucket) or p~ (renormalised); kept is None unpruned."""
  x = student_NxV.astype(jnp.float32) / temperature
  log_p = _log_p(teacher_NxV, temperature, t.max_N, t.log_total_N)
  if rule == "none":
    return x, x - s_lse_N[:, None], jnp.exp(log_p), log_p, None
  kept = _kept(rule, teacher_NxV, log_p, t)
  log_w = log_p if with_other else log_p - t.log_mass_N[:, None]
  return x, x - s_lse_N[:, None], kept * jnp.exp(log_w), log_w, kept


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _kl(rule, with_other, student_NxV, teacher_NxV, temperature, t):
  return _kl_fwd(rule, with_other, student_NxV, teacher_NxV, temperature, t)[0]


def _kl_fwd(rule, with_other, student_NxV, teacher_NxV, temperature, t):
  s_max_N, s_log_total_N = _max_and_log_total(student_NxV.astype(jnp.float32) / temperature)
  s_lse_N = s_max_N + s_log_total_N
  x, log_q, w, log_w, kept = _terms(rule, with_other, student_NxV, teacher_NxV, temperature, s_lse_N, t)
  # a student logit of -inf where w > 0 makes log q = -inf and the term +inf (the KL is infinite there);
  # where w = 0 the term is 0 (0 log 0), never a NaN
  value_N = jnp.sum(jnp.where(w > 0, w * (log_w - log_q), 0.0), axis=-1)
  bucket_lse_N = jnp.zeros_like(s_lse_N)
  if with_other:
    bucket_lse_N = _weighted_logsumexp(jnp.maximum(x, FLOAT_MIN), 1.0 - kept)
    other_N = jnp.exp(t.log_mass_N)
    value_N = value_N + jnp.where(other_N > 0, other_N * (t.log_mass_N - bucket_lse_N + s_lse_N), 0.0)
    # the teacher's OTHER mass where the student has none outside K: +inf as well
    value_N = jnp.where((other_N > 0) & (bucket_lse_N <= 0.5 * FLOAT_MIN), jnp.inf, value_N)
  return jnp.maximum(value_N, 0.0), (student_NxV, teacher_NxV, temperature, t, s_lse_N, bucket_lse_N)


def _kl_bwd(rule, with_other, residuals, g_N):
  student_NxV, teacher_NxV, temperature, t, s_lse_N, bucket_lse_N = residuals
  x, log_q, w, _, kept = _terms(rule, with_other, student_NxV, teacher_NxV, temperature, s_lse_N, t)
  target = w
  if with_other:  # the bucket's mass spread over the pruned tokens in the student's own proportions
    share = jnp.exp(jnp.minimum(x - bucket_lse_N[:, None], 0.0)) * (1.0 - kept)
    target = target + jnp.exp(t.log_mass_N)[:, None] * share
  grad = (g_N / temperature)[:, None] * (jnp.exp(log_q) - target)
  zeros = jax.tree.map(jnp.zeros_like, (teacher_NxV, temperature, t))
  return (grad.astype(student_NxV.dtype), *zeros)


_kl.defvjp(_kl_fwd, _kl_bwd)


def _nucleus_limit(log_p_NxV, top_p: float):
  """(the row's largest log p, the largest distance from it that the nucleus keeps): `top_p_mask`'s cut,
  as a float (the cut's 31 bits are the kept distances' float32 bit patterns, which order like them)."""
  cut_Nx2 = jax.lax.platform_dependent(log_p_NxV, top_p, cpu=_nucleus_cut_in_blocks, default=_nucleus_cut)
  bits_N = cut_Nx2[:, 0].astype(jnp.int32) * 256 + cut_Nx2[:, 1].astype(jnp.int32)
  return jnp.max(log_p_NxV, axis=-1), jax.lax.bitcast_convert_type(bits_N, jnp.float32)


def _teacher_rows(rule, with_other, teacher_NxV, temperature, top_k, top_p) -> tuple[_Teacher, jax.Array]:
  """The teacher's per-row numbers, and its mass inside K (1 unpruned: the `teacher_mass_kept` metric)."""
  x = teacher_NxV.astype(jnp.float32) / temperature
  max_N, log_total_N = _max_and_log_total(x)
  zeros = jnp.zeros_like(max_N)
  if rule == "none":
    return _Teacher(max_N, log_total_N, zeros, zeros, zeros), jnp.ones_like(max_N)
  log_p = _log_p(teacher_NxV, temperature, max_N, log_total_N)
  if rule == "top_k":
    # the smallest of the k values, not the k-th by slicing: XLA CPU rewrites top_k + slice into a sort
    # of the whole row, ~100x slower at 128k
    origin_N, limit_N = zeros, jnp.min(jax.lax.top_k(teacher_NxV.astype(jnp.float32), top_k)[0], axis=-1)
  else:
    origin_N, limit_N = _nucleus_limit(log_p, top_p)
  t = _Teacher(max_N, log_total_N, origin_N, limit_N, zeros)
  kept, p = _kept(rule, teacher_NxV, log_p, t), jnp.exp(log_p)
  mass_kept_N = jnp.sum(kept * p, axis=-1)
  # the bucket's mass summed, not 1 - kept: no cancellation; log 0 = -inf where nothing was pruned
  log_mass_N = jnp.log(jnp.sum((1.0 - kept) * p, axis=-1)) if with_other else jnp.log(mass_kept_N)
  return t._replace(log_mass_N=log_mass_N), mass_kept_N


def kl_to_teacher_logits(student_NxV, teacher_NxV, temperature, top_k=0, top_p=0.0, use_other_bucket=False):
  """(per-token KL(teacher target || student) at T, the teacher's mass kept): `teacher_target` +
  `kd_divergence` of the same pruning, without their [N, V] arrays."""
  vocab = teacher_NxV.shape[-1]
  rule = "top_k" if top_k and top_k < vocab else "top_p" if top_p and top_p < 1.0 else "none"
  with_other = use_other_bucket and rule != "none"
  teacher = jax.lax.stop_gradient(teacher_NxV).astype(jnp.float32)
  temperature = jnp.asarray(temperature, jnp.float32)
  t, mass_kept_N = jax.lax.stop_gradient(_teacher_rows(rule, with_other, teacher, temperature, top_k, top_p))

  def fused():
    return _kl(rule, with_other, student_NxV, teacher, temperature, t), mass_kept_N

  if rule != "top_k":
    return fused()

  def dense():  # a tie at the k-th logit: K holds exactly k tokens, broken by index as `top_k_mask` does
    target = teacher_target(teacher, temperature, top_k, None, use_other_bucket)
    return kd_divergence(student_NxV, target, temperature), target.mass_kept_N

  ties = jnp.any(jnp.sum((teacher >= t.limit_N[:, None]).astype(jnp.int32), axis=-1) > top_k)
  return jax.lax.cond(ties, dense, fused)
