"""Loss numerics: float32 cross-entropy, the distillation divergence, and token-chunked evaluation.

Per-token losses never need the full [batch x length x vocab] logits: `chunked_sums` slices the
tokens into chunks, projects each chunk to the vocabulary inside a rematerialised scan body, and
returns only summed scalars, so loss memory is set by `loss_chunk_size`, not by batch x length.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

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


def log_softmax_at(logits: jax.Array, temperature) -> jax.Array:
  return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def top_k_mask(teacher_logits_NxV: jax.Array, k: int) -> jax.Array:
  """True at the k largest teacher logits of each row (exactly k, ties broken by index)."""
  _, ids_NxK = jax.lax.top_k(teacher_logits_NxV, k)
  rows = jnp.arange(teacher_logits_NxV.shape[0])[:, None]
  return jnp.zeros(teacher_logits_NxV.shape, jnp.bool_).at[rows, ids_NxK].set(True)


def top_p_mask(teacher_logp_NxV: jax.Array, top_p: float) -> jax.Array:
  """Nucleus mask without sorting: token i is kept while the mass of strictly more probable tokens is < top_p.

  The cut is found by bisection over the float32 bit patterns of (max log-prob - log-prob), which are
  ordered like the values for non-negative floats: 31 masked-sum passes give the exact threshold.
  """
  distance_NxV = jnp.max(teacher_logp_NxV, axis=-1, keepdims=True) - teacher_logp_NxV
  bits_NxV = jax.lax.bitcast_convert_type(distance_NxV, jnp.int32)
  probs_NxV = jnp.exp(teacher_logp_NxV)
  rows = teacher_logp_NxV.shape[0]

  def halve(_, bounds):
    lo_N, hi_N = bounds  # mass(bits < lo) < top_p <= mass(bits < hi)
    mid_N = lo_N + (hi_N - lo_N) // 2
    mass_N = jnp.sum(jnp.where(bits_NxV < mid_N[:, None], probs_NxV, 0.0), axis=-1)
    below = mass_N < top_p
    return jnp.where(below, mid_N, lo_N), jnp.where(below, hi_N, mid_N)

  start = (jnp.zeros(rows, jnp.int32), jnp.full(rows, 0x7F800001, jnp.int32))
  lo_N, _ = jax.lax.fori_loop(0, 31, halve, start)
  return bits_NxV <= lo_N[:, None]


_FLOAT_MIN = float(jnp.finfo(jnp.float32).min)


def _masked_logsumexp(x_NxV: jax.Array, mask_NxV: jax.Array) -> jax.Array:
  """log sum exp over the masked entries; -inf for rows with none."""
  any_N = jnp.any(mask_NxV, axis=-1)
  safe = jnp.where(any_N[:, None], jnp.where(mask_NxV, x_NxV, -jnp.inf), 0.0)
  return jnp.where(any_N, jax.nn.logsumexp(safe, axis=-1), -jnp.inf)


def _weighted_logsumexp(x_NxV: jax.Array, weights_NxV: jax.Array) -> jax.Array:
  """log sum_i w_i exp(x_i) for 0/1 weights, stable (own max) and built from ops that vectorise on CPU."""
  shifted_max_N = jnp.max(x_NxV + (weights_NxV - 1.0) * -_FLOAT_MIN, axis=-1)
  shifted_max_N = jnp.maximum(shifted_max_N, _FLOAT_MIN)  # rows with no weight
  total_N = jnp.sum(jnp.exp(jnp.minimum(x_NxV - shifted_max_N[:, None], 0.0)) * weights_NxV, axis=-1)
  return shifted_max_N + jnp.log(jnp.maximum(total_N, 1e-38))  # finite (and unused) for rows with no weight


class TeacherTarget(NamedTuple):
  """What the divergence needs of the teacher at temperature T (no gradient flows into it)."""

  target_NxV: jax.Array  # target probabilities: kept teacher probs (renormalised, or raw with OTHER), 0 elsewhere
  log_target_NxV: jax.Array  # their logs, clamped to the float32 minimum where the target is 0
  other_mass_N: jax.Array | None  # pruned teacher mass (OTHER bucket); None without the bucket
  pruned_NxV: jax.Array | None  # 1.0 on pruned tokens (OTHER bucket), else None
  mass_kept_N: jax.Array  # teacher mass inside the kept set (1 without pruning)


def _teacher_probs(teacher_logits_NxV, temperature):
  """(probs, log-probs) at T with one exp pass."""
  x = jax.lax.stop_gradient(teacher_logits_NxV).astype(jnp.float32) / temperature
  shifted = x - jnp.max(x, axis=-1, keepdims=True)
  unnormalised = jnp.exp(shifted)
  total = jnp.sum(unnormalised, axis=-1, keepdims=True)
  return unnormalised / total, jnp.maximum(shifted - jnp.log(total), _FLOAT_MIN)


def teacher_target(teacher_logits_NxV, temperature, top_k=None, top_p=None, use_other_bucket=False) -> TeacherTarget:
  """The teacher's (pruned, renormalised or OTHER-bucketed) target distribution at temperature T."""
  t_p, t_logp = _teacher_probs(teacher_logits_NxV, temperature)
  rows, vocab = t_p.shape
  prune_k = bool(top_k) and top_k < vocab
  prune_p = bool(top_p) and top_p < 1.0
  if not (prune_k or prune_p):
    return TeacherTarget(t_p, t_logp, None, None, jnp.ones((rows,), jnp.float32))
  kept = top_k_mask(jax.lax.stop_gradient(teacher_logits_NxV), top_k) if prune_k else top_p_mask(t_logp, top_p)
  kept_p = jnp.where(kept, t_p, 0.0)
  mass_kept = jnp.sum(kept_p, axis=-1)
  if use_other_bucket:
    other_mass = jnp.sum(jnp.where(kept, 0.0, t_p), axis=-1)  # summed, not 1 - kept: no cancellation
    return TeacherTarget(
      kept_p, jnp.where(kept, t_logp, _FLOAT_MIN), other_mass, (~kept).astype(jnp.float32), mass_kept
    )
  log_mass = jnp.log(mass_kept)[:, None]
  return TeacherTarget(
    kept_p / mass_kept[:, None], jnp.where(kept, t_logp - log_mass, _FLOAT_MIN), None, None, mass_kept
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _divergence(with_other, student_NxV, temperature, target_NxV, log_target_NxV, other_mass_N, pruned_NxV):
  return _divergence_fwd(with_other, student_NxV, temperature, target_NxV, log_target_NxV, other_mass_N, pruned_NxV)[0]


def _divergence_fwd(with_other, student_NxV, temperature, target_NxV, log_target_NxV, other_mass_N, pruned_NxV):
  # KL = sum_i pi_i (log pi_i - log q_i)  [+ P_o (log P_o - log Q_o)], log q = x - lse(x), x = s / T.
  # -inf logits are clamped to the float32 minimum so that 0 * (-inf) never makes a NaN.
  x = jnp.maximum(student_NxV.astype(jnp.float32) / temperature, _FLOAT_MIN)
  lse_N = jax.nn.logsumexp(x, axis=-1)
  value = jnp.sum(target_NxV * (log_target_NxV - (x - lse_N[:, None])), axis=-1)  # small differences: precise
  lse_pruned_N = jnp.zeros_like(lse_N)
  if with_other:
    lse_pruned_N = _weighted_logsumexp(x, pruned_NxV)
    log_other = jnp.log(jnp.maximum(other_mass_N, 1e-38))
    value = value + jnp.where(other_mass_N > 0, other_mass_N * (log_other - lse_pruned_N + lse_N), 0.0)
  return value, (student_NxV, temperature, target_NxV, other_mass_N, pruned_NxV, lse_N, lse_pruned_N)


def _divergence_bwd(with_other, residuals, g_N):
  student_NxV, temperature, target_NxV, other_mass_N, pruned_NxV, lse_N, lse_pruned_N = residuals
  x = jnp.maximum(student_NxV.astype(jnp.float32) / temperature, _FLOAT_MIN)
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


def kl_divergence_between_logits(
  student_logits, teacher_logits, temperature, top_k=None, top_p=None, use_other_bucket=False
):
  """Per-token KL(teacher_T || student_T) in float32 (not multiplied by T^2; the loss does that).

  Logits of any leading shape [..., V] in any float dtype. top_k / top_p prune the teacher
  distribution (0 or None = off; k >= V or p >= 1 = off); the kept teacher probabilities are
  renormalised, or with `use_other_bucket` the pruned teacher mass and the student's mass outside
  the kept set form one extra OTHER bucket. The student always uses full-vocabulary log-probs.
  """
  if top_k and top_p:
    raise ValueError("kd_top_k and kd_top_p are exclusive")
  lead, vocab = student_logits.shape[:-1], student_logits.shape[-1]
  target = teacher_target(teacher_logits.reshape(-1, vocab), temperature, top_k, top_p, use_other_bucket)
  return kd_divergence(student_logits.reshape(-1, vocab), target, temperature).reshape(lead)


def project_logits(hidden_NxD: jax.Array, w_DxV: jax.Array) -> jax.Array:
  """Output projection with float32 accumulation and result."""
  return jnp.einsum("nd,dv->nv", hidden_NxD, w_DxV.astype(hidden_NxD.dtype), preferred_element_type=jnp.float32)


def _pad_rows(x: jax.Array, rows: int) -> jax.Array:
  pad = rows - x.shape[0]
  return x if pad == 0 else jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def chunked_sums(chunk_fn: Callable[..., dict], per_token: dict, shared: dict, chunk_size: int) -> dict:
  """Sums `chunk_fn(per_token_chunk, shared)` over token chunks.

  `per_token` holds arrays with a leading token axis N (hidden states, targets, weights, ...);
  rows added to fill the last chunk are zero, so `chunk_fn` must weight every term by the
  `weights` entry. `shared` (e.g. the unembedding matrix) is passed whole to each chunk. The body
  is rematerialised, so the backward pass also holds one chunk of logits at a time.
  """
  n = jax.tree.leaves(per_token)[0].shape[0]
  chunk = min(chunk_size, n)
  num_chunks = -(-n // chunk)
  chunked = jax.tree.map(lambda x: _pad_rows(x, num_chunks * chunk).reshape(num_chunks, chunk, *x.shape[1:]), per_token)
  if num_chunks == 1:  # one chunk is the memory budget anyway: no need to recompute it in the backward pass
    return chunk_fn(jax.tree.map(lambda x: x[0], chunked), shared)
  body = jax.checkpoint(lambda xs: chunk_fn(xs, shared), policy=jax.checkpoint_policies.nothing_saveable)

  def step(total, xs):
    return jax.tree.map(jnp.add, total, body(xs)), None

  first = body(jax.tree.map(lambda x: x[0], chunked))
  total, _ = jax.lax.scan(step, first, jax.tree.map(lambda x: x[1:], chunked))
  return total


def ce_chunk_sums(xs: dict, shared: dict, z_loss: float) -> dict:
  """Summed CE, z-loss and token count of one chunk (hidden states projected here)."""
  logits = project_logits(xs["hidden"], shared["w_DxV"])
  loss_N, z_N = cross_entropy_with_logits(logits, xs["targets"], z_loss)
  weights = xs["weights"]
  return {"ce_sum": jnp.sum((loss_N - z_N) * weights), "z_loss_sum": jnp.sum(z_N * weights), "tokens": jnp.sum(weights)}
