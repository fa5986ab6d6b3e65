"""The divergences a student can learn a teacher target with (`kd_divergence`), float32, exact gradients.

With p the teacher and q the student (both at temperature T), per token, summed over the outcomes:

| name | value | d value / d q_i, times q_i (what the backward pass needs) |
|---|---|---|
| forward_kl | sum p log(p / q) | -p (losses/divergences.py, today's path) |
| reverse_kl | sum q log(q / p) | q (log q - log p + 1) |
| jsd (beta) | beta KL(p \\|\\| m) + (1 - beta) KL(q \\|\\| m), m = beta p + (1 - beta) q | (1 - beta) q log(q / m) |
| tvd | 0.5 sum \\|p - q\\| | 0.5 q sign(q - p) |
| skew_forward_kl (a) | KL(p \\|\\| a p + (1 - a) q) | -(1 - a) p q / m |
| skew_reverse_kl (a) | KL(q \\|\\| a q + (1 - a) p) | q (log(q / m) + 1 - a q / m) |

jsd with beta 0 and 1 is forward and reverse KL (TRL's definition: the formula itself tends to 0 at both
ends; jsd / beta -> forward KL and jsd / (1 - beta) -> reverse KL).

The outcomes are the vocabulary; with pruning and the OTHER bucket, the kept tokens and one bucket
(teacher mass P_o, student mass Q_o outside the kept set); with renormalised pruning, the kept tokens
with both distributions renormalised over them (`TeacherTarget.support_NxV`). The gradient with respect
to the student's logits x = s / T of any such sum is (h - r sum h) / T, h_i = q_i dD/dq_i of the outcome
holding token i (a bucket token gets its share q_i / Q_o of the bucket's term) and r the student's
distribution over the tokens: one elementwise pass, no [N, V] arrays kept beyond the inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from MaxText.losses.divergences import _weighted_logsumexp, kd_divergence
from MaxText.losses.targets import FLOAT_MIN, TeacherTarget

NAMES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")


@dataclasses.dataclass(frozen=True)
class Divergence:
  """Which divergence, with its one parameter (jsd's beta or a skew's alpha); static at compile time."""

  name: str = "forward_kl"
  param: float = 0.0

  @classmethod
  def from_config(cls, config) -> Divergence:
    name = config.kd_divergence
    if name == "jsd" and config.kd_jsd_beta in (0.0, 1.0):  # TRL's ends: the two KLs
      return cls("forward_kl" if config.kd_jsd_beta == 0.0 else "reverse_kl")
    param = {"jsd": config.kd_jsd_beta, "skew_forward_kl": config.kd_skew_alpha}.get(name, 0.0)
    return cls(name, config.kd_skew_alpha if name == "skew_reverse_kl" else param)


def _log_mix(weight: float, log_a, log_b):
  """log(w a + (1 - w) b) from the logs, for w in [0, 1]."""
  if weight == 0.0:
    return log_b
  if weight == 1.0:
    return log_a
  return jnp.logaddexp(math.log(weight) + log_a, math.log1p(-weight) + log_b)


def _terms(div: Divergence, p, q, log_p, log_q):
  """(value, q dD/dq) per outcome, elementwise. Zero-probability outcomes contribute 0 (0 log 0 = 0)."""
  name, a = div.name, div.param
  safe = lambda weight, x: jnp.where(weight > 0, weight * x, 0.0)
  if name == "reverse_kl":
    return safe(q, log_q - log_p), safe(q, log_q - log_p + 1.0)
  if name == "tvd":
    return 0.5 * jnp.abs(p - q), 0.5 * q * jnp.sign(q - p)
  if name == "jsd":
    log_m = _log_mix(a, log_p, log_q)
    value = a * safe(p, log_p - log_m) + (1.0 - a) * safe(q, log_q - log_m)
    return value, (1.0 - a) * safe(q, log_q - log_m)
  if name == "skew_forward_kl":
    log_m = _log_mix(a, log_p, log_q)
    return safe(p, log_p - log_m), -(1.0 - a) * safe(p, jnp.exp(log_q - log_m))
  if name == "skew_reverse_kl":
    log_m = _log_mix(a, log_q, log_p)
    return safe(q, log_q - log_m), safe(q, log_q - log_m + 1.0 - a * jnp.exp(log_q - log_m))
  raise ValueError(f"no divergence named {name!r}")


class _Layout:
  """The student's distribution over the outcomes: per-token log q and r, and the OTHER bucket's mass."""

  def __init__(self, x_NxV, bucket_NxV, support_NxV, with_other: bool, restricted: bool):
    if restricted:  # renormalised over the kept tokens
      self.lse_N = _weighted_logsumexp(x_NxV, support_NxV)
      self.tokens_NxV = support_NxV
    else:
      self.lse_N = jax.nn.logsumexp(x_NxV, axis=-1)
      self.tokens_NxV = (1.0 - bucket_NxV) if with_other else jnp.ones_like(x_NxV)
    self.log_q_NxV = jnp.maximum(x_NxV - self.lse_N[:, None], FLOAT_MIN)
    self.r_NxV = jnp.exp(jnp.minimum(self.log_q_NxV, 0.0)) * (support_NxV if restricted else 1.0)
    if with_other:
      self.lse_bucket_N = _weighted_logsumexp(x_NxV, bucket_NxV)
      self.log_q_other_N = jnp.maximum(self.lse_bucket_N - self.lse_N, FLOAT_MIN)


def _forward(
  div, with_other, restricted, student_NxV, temperature, target_NxV, log_target_NxV, other_N, bucket, support
):
  x = jnp.maximum(student_NxV.astype(jnp.float32) / temperature, FLOAT_MIN)
  layout = _Layout(x, bucket, support, with_other, restricted)
  q = layout.r_NxV
  value_NxV, _ = _terms(div, target_NxV, q, log_target_NxV, layout.log_q_NxV)
  value_N = jnp.sum(layout.tokens_NxV * value_NxV, axis=-1)
  if with_other:
    log_p_other = jnp.log(jnp.maximum(other_N, 1e-30))
    other_value, _ = _terms(div, other_N, jnp.exp(layout.log_q_other_N), log_p_other, layout.log_q_other_N)
    value_N = value_N + other_value
  return jnp.maximum(value_N, 0.0), (x, layout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _family(
  div, with_other, restricted, student_NxV, temperature, target_NxV, log_target_NxV, other_N, bucket, support
):
  args = (student_NxV, temperature, target_NxV, log_target_NxV, other_N, bucket, support)
  return _forward(div, with_other, restricted, *args)[0]


def _family_fwd(
  div, with_other, restricted, student_NxV, temperature, target_NxV, log_target_NxV, other_N, bucket, support
):
  args = (student_NxV, temperature, target_NxV, log_target_NxV, other_N, bucket, support)
  value_N, _ = _forward(div, with_other, restricted, *args)
  return value_N, args  # the backward pass recomputes the layout: nothing [N, V] is kept besides the inputs


def _family_bwd(div, with_other, restricted, residuals, g_N):
  student_NxV, temperature, target_NxV, log_target_NxV, other_N, bucket, support = residuals
  x = jnp.maximum(student_NxV.astype(jnp.float32) / temperature, FLOAT_MIN)
  layout = _Layout(x, bucket, support, with_other, restricted)
  _, h_NxV = _terms(div, target_NxV, layout.r_NxV, log_target_NxV, layout.log_q_NxV)
  h_NxV = layout.tokens_NxV * h_NxV
  if with_other:
    log_p_other = jnp.log(jnp.maximum(other_N, 1e-30))
    q_other = jnp.exp(layout.log_q_other_N)
    _, h_other_N = _terms(div, other_N, q_other, log_p_other, layout.log_q_other_N)
    share_NxV = jnp.exp(jnp.minimum(x - layout.lse_bucket_N[:, None], 0.0)) * bucket
    h_NxV = h_NxV + share_NxV * h_other_N[:, None]
  grad = (g_N / temperature)[:, None] * (h_NxV - layout.r_NxV * jnp.sum(h_NxV, axis=-1, keepdims=True))
  zeros = jax.tree.map(jnp.zeros_like, (temperature, target_NxV, log_target_NxV, other_N, bucket, support))
  return (grad.astype(student_NxV.dtype), *zeros)


_family.defvjp(_family_fwd, _family_bwd)


def divergence(student_logits_NxV, target: TeacherTarget, temperature, div: Divergence = Divergence()) -> jax.Array:
  """Per-token divergence `div` of the student from the teacher target at temperature T (before T^2)."""
  if div.name == "forward_kl":
    return kd_divergence(student_logits_NxV, target, temperature)  # today's path, bit for bit
  rows = student_logits_NxV.shape[0]
  with_other = target.other_mass_N is not None
  restricted = target.support_NxV is not None
  none_N, none_Nx1 = jnp.zeros((rows,), jnp.float32), jnp.zeros((rows, 1), jnp.float32)
  return _family(
    div,
    with_other,
    restricted,
    student_logits_NxV,
    jnp.asarray(temperature, jnp.float32),
    target.target_NxV,
    target.log_target_NxV,
    target.other_mass_N if with_other else none_N,
    target.pruned_NxV if with_other else none_Nx1,
    target.support_NxV if restricted else none_Nx1,
  )
