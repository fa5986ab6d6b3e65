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
  """1.0 at the k largest teacher logits of each row (exactly k, ties broken by index), else 0.0."""
  _, ids_NxK = jax.lax.top_k(teacher_logits_NxV, k)
  rows = jnp.arange(teacher_logits_NxV.shape[0])[:, None]
  return jnp.zeros(teacher_logits_NxV.shape, jnp.float32).at[rows, ids_NxK].set(1.0)


def _below(keys_NxV: jax.Array, cut_N: jax.Array) -> jax.Array:
  """1.0 where key < cut, else 0.0, for integer-valued float keys and cuts.

  min(d, 1) - min(d, 0) with d = cut - key is exactly that indicator for integers; unlike a
  compare-and-select it vectorises on CPU, which makes each bisection pass about 10x cheaper.
  """
  d = cut_N[:, None] - keys_NxV
  return jnp.minimum(d, 1.0) - jnp.minimum(d, 0.0)


def _bisect(keys_NxV, probs_NxV, top_p, lo_N, hi_N, passes: int):
  """Largest integer cut with mass(key < cut) < top_p, given mass(key < lo) < top_p <= mass(key < hi)."""

  def halve(_, bounds):
    lo, hi = bounds
    mid = jnp.floor((lo + hi) / 2)
    below = jnp.sum(_below(keys_NxV, mid) * probs_NxV, axis=-1) < top_p
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  return jax.lax.fori_loop(0, passes, halve, (lo_N, hi_N))[0]


def top_p_mask(teacher_logp_NxV: jax.Array, top_p: float) -> jax.Array:
  """Nucleus mask (float 0/1) without sorting: a token is kept while the mass of strictly more probable
  tokens is < top_p.

  The float32 bit patterns of (max log-prob - log-prob) are ordered like the values (non-negative
  floats). The exact cut in those 31-bit patterns is found by bisection in two exact stages: 23 passes
  over the high 23 bits, then 8 over the low 8 bits of the tokens that share the high cut.
  """
  distance_NxV = jnp.max(teacher_logp_NxV, axis=-1, keepdims=True) - teacher_logp_NxV
  bits_NxV = jax.lax.bitcast_convert_type(distance_NxV, jnp.int32)
  high_NxV = jnp.right_shift(bits_NxV, 8).astype(jnp.float32)  # < 2^23: exact in float32
  low_NxV = jnp.bitwise_and(bits_NxV, 255).astype(jnp.float32)
  probs_NxV = jnp.exp(teacher_logp_NxV)
  rows = teacher_logp_NxV.shape[0]
  zeros = jnp.zeros(rows, jnp.float32)
  high_cut = _bisect(high_NxV, probs_NxV, top_p, zeros, jnp.full(rows, 2.0**23), 23)
  # tokens below the high cut always count (-1), those above never (256), those on it by their low bits
  before = _below(high_NxV, high_cut)
  on_cut = _below(high_NxV, high_cut + 1.0) - before
  low_keys = -before + on_cut * low_NxV + (1.0 - before - on_cut) * 256.0
  low_cut = _bisect(low_keys, probs_NxV, top_p, zeros, jnp.full(rows, 256.0), 8)
  return _below(low_keys, low_cut + 1.0)


_FLOAT_MIN = float(jnp.finfo(jnp.float32).min)


_BELOW_ANY_LOGIT = 1e30  # shifts unweighted entries far below any real logit, far from float32 overflow


def _weighted_logsumexp(x_NxV: jax.Array, weights_NxV: jax.Array) -> jax.Array:
  """log sum_i w_i exp(x_i) for 0/1 weights, stable (own max) and built from ops that vectorise on CPU.

  Rows with no weight get a large negative finite value (their OTHER mass is 0, so it is never used).
  """
  has_weight_N = jnp.sum(weights_NxV, axis=-1) > 0
  max_N = jnp.max(x_NxV + (weights_NxV - 1.0) * _BELOW_ANY_LOGIT, axis=-1)
  total_N = jnp.sum(jnp.exp(jnp.minimum(x_NxV - max_N[:, None], 0.0)) * weights_NxV, axis=-1)
  return max_N + jnp.log(jnp.where(has_weight_N, total_N, 1.0))


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
  pruned = 1.0 - kept  # float masks: multiplying vectorises on CPU where selecting does not
  kept_p = kept * t_p
  mass_kept = jnp.sum(kept_p, axis=-1)
  if use_other_bucket:
    other_mass = jnp.sum(pruned * t_p, axis=-1)  # summed, not 1 - kept: no cancellation
    return TeacherTarget(kept_p, kept * t_logp + pruned * _FLOAT_MIN, other_mass, pruned, mass_kept)
  log_mass = jnp.log(mass_kept)[:, None]
  return TeacherTarget(
    kept_p / mass_kept[:, None], kept * (t_logp - log_mass) + pruned * _FLOAT_MIN, None, None, mass_kept
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
    log_other = jnp.log(jnp.maximum(other_mass_N, 1e-30))  # (a normal float: no flush-to-zero)
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
