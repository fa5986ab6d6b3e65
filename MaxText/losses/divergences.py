"""Divergences between the student and a teacher target, float32, with hand-written gradients.

`kd_divergence` is KL(target || student) at temperature T over a dense `TeacherTarget` (full, pruned
and renormalised, or with an OTHER bucket); `renormalized_divergence` the k-way forms of a cached top-k.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from MaxText.losses.targets import FLOAT_MIN, TeacherTarget

_BELOW_ANY_LOGIT = 1e30  # shifts unweighted entries far below any real logit, far from float32 overflow


def _weighted_logsumexp(x_NxV: jax.Array, weights_NxV: jax.Array) -> jax.Array:
  """log sum_i w_i exp(x_i) for 0/1 weights, stable (own max) and built from ops that vectorise on CPU.

  Rows with no weight get a large negative finite value (their OTHER mass is 0, so it is never used).
  """
  has_weight_N = jnp.sum(weights_NxV, axis=-1) > 0
  max_N = jnp.max(x_NxV + (weights_NxV - 1.0) * _BELOW_ANY_LOGIT, axis=-1)
  total_N = jnp.sum(jnp.exp(jnp.minimum(x_NxV - max_N[:, None], 0.0)) * weights_NxV, axis=-1)
  return max_N + jnp.log(jnp.where(has_weight_N, total_N, 1.0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _divergence(with_other, student_NxV, temperature, target_NxV, log_target_NxV, other_mass_N, pruned_NxV):
  return _divergence_fwd(with_other, student_NxV, temperature, target_NxV, log_target_NxV, other_mass_N, pruned_NxV)[0]


def _rules_out_teacher_mass(x_NxV, target_NxV, other_mass_N, lse_pruned_N, with_other: bool):
  """Rows where the teacher puts mass on what the student rules out (a -inf logit, a row of them, or no
  student mass at all outside the kept set while OTHER has mass): there the KL is +inf, not a large or
  negative finite number."""
  ruled_out_N = jnp.sum(jnp.where(x_NxV <= FLOAT_MIN, target_NxV, 0.0), axis=-1) > 0
  if with_other:
    ruled_out_N = ruled_out_N | ((other_mass_N > 0) & (lse_pruned_N <= 0.5 * FLOAT_MIN))
  return ruled_out_N


def _divergence_fwd(with_other, student_NxV, temperature, target_NxV, log_target_NxV, other_mass_N, pruned_NxV):
  # KL = sum_i pi_i (log pi_i - log q_i)  [+ P_o (log P_o - log Q_o)], log q = x - lse(x), x = s / T.
  # -inf logits are clamped to the float32 minimum so that 0 * (-inf) never makes a NaN.
  x = jnp.maximum(student_NxV.astype(jnp.float32) / temperature, FLOAT_MIN)
  lse_N = jax.nn.logsumexp(x, axis=-1)
  value = jnp.sum(target_NxV * (log_target_NxV - (x - lse_N[:, None])), axis=-1)  # small differences: precise
  lse_pruned_N = jnp.zeros_like(lse_N)
  if with_other:
    lse_pruned_N = _weighted_logsumexp(x, pruned_NxV)
    log_other = jnp.log(jnp.maximum(other_mass_N, 1e-30))  # (a normal float: no flush-to-zero)
    value = value + jnp.where(other_mass_N > 0, other_mass_N * (log_other - lse_pruned_N + lse_N), 0.0)
  value = jnp.maximum(value, 0.0)  # a KL is >= 0; float rounding can leave -1e-26 where p = q
  value = jnp.where(_rules_out_teacher_mass(x, target_NxV, other_mass_N, lse_pruned_N, with_other), jnp.inf, value)
  return value, (student_NxV, temperature, target_NxV, other_mass_N, pruned_NxV, lse_N, lse_pruned_N)


def _divergence_bwd(with_other, residuals, g_N):
  student_NxV, temperature, target_NxV, other_mass_N, pruned_NxV, lse_N, lse_pruned_N = residuals
  x = jnp.maximum(student_NxV.astype(jnp.float32) / temperature, FLOAT_MIN)
  total_N = jnp.sum(target_NxV, axis=-1)
  target = target_NxV
  if with_other:
    # the OTHER bucket spreads its teacher mass over the pruned tokens in the student's own proportions
    share = jnp.exp(jnp.minimum(x - lse_pruned_N[:, None], 0.0)) * pruned_NxV
    target = target + other_mass_N[:, None] * share
    total_N = total_N + other_mass_N
  q = jnp.exp(x - lse_N[:, None])
  grad = (g_N / temperature)[:, None] * (total_N[:, None] * q - target)
  zeros = jax.tree.map(jnp.zeros_like, (temperature, target_NxV, target_NxV, other_mass_N, pruned_NxV))
  return (grad.astype(student_NxV.dtype), *zeros)


_divergence.defvjp(_divergence_fwd, _divergence_bwd)


def kd_divergence(student_logits_NxV, target: TeacherTarget, temperature) -> jax.Array:
  """Per-token KL(teacher target || student) at temperature T, float32, with a hand-written gradient."""
  with_other = target.other_mass_N is not None
  rows = student_logits_NxV.shape[0]
  other_mass = target.other_mass_N if with_other else jnp.zeros((rows,), jnp.float32)
  pruned = target.pruned_NxV if with_other else jnp.zeros((rows, 1), jnp.float32)
  return _divergence(
    with_other,
    student_logits_NxV,
    jnp.asarray(temperature, jnp.float32),
    target.target_NxV,
    target.log_target_NxV,
    other_mass,
    pruned,
  )


def renormalized_divergence(student_logits_NxV, values_NxK, ids_NxK, temperature, student_full: bool):
  """KL over the cached ids with the teacher renormalised over them; the student renormalised too
  (renormalize_both) or taken with its full-vocabulary log-probs (student_full)."""
  t_logp = jax.nn.log_softmax(values_NxK.astype(jnp.float32) / temperature, axis=-1)
  x = student_logits_NxV.astype(jnp.float32) / temperature
  s_at_ids = jnp.take_along_axis(x, ids_NxK, axis=-1)
  if student_full:
    s_logp = s_at_ids - jax.nn.logsumexp(x, axis=-1, keepdims=True)
  else:
    s_logp = jax.nn.log_softmax(s_at_ids, axis=-1)
  return jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1)
