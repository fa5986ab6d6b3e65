"""What the divergences compare against: the teacher's (pruned) distribution at a temperature T.

From live teacher logits (`teacher_target`: top-k / top-p pruning, renormalised or with an OTHER
bucket for the pruned mass) or from a cache of the teacher's top-k logits and full-vocabulary
log-sum-exps (`cached_target`: the exact (k+1)-way distribution), in one dense form, `TeacherTarget`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

FLOAT_MIN = float(jnp.finfo(jnp.float32).min)  # log of a zero target; -inf would make 0 * -inf = NaN


def top_k_mask(teacher_logits_NxV: jax.Array, k: int) -> jax.Array:
  """1.0 at the k largest teacher logits of each row (exactly k, ties broken by index), else 0.0."""
  _, ids_NxK = jax.lax.top_k(teacher_logits_NxV, k)
  rows = jnp.arange(teacher_logits_NxV.shape[0])[:, None]
  return jnp.zeros(teacher_logits_NxV.shape, jnp.float32).at[rows, ids_NxK].set(1.0)


def _below(keys_NxV: jax.Array, cut_N: jax.Array) -> jax.Array:
  """1.0 where key < cut, else 0.0 (keys and cuts are integer-valued floats).

  A compare cast to float: XLA CPU vectorises it (YNNPACK reductions), and it is 30% cheaper per
  bisection pass than the arithmetic form min(cut - key, 1) - min(cut - key, 0) it replaced.
  """
  return (keys_NxV < cut_N[:, None]).astype(jnp.float32)


def _bisect(keys_NxV, probs_NxV, top_p, lo_N, hi_N, passes: int):
  """Largest integer cut with mass(key < cut) < top_p, given mass(key < lo) < top_p <= mass(key < hi)."""

  def halve(_, bounds):
    lo, hi = bounds
    mid = jnp.floor((lo + hi) / 2)
    below = jnp.sum(_below(keys_NxV, mid) * probs_NxV, axis=-1) < top_p
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  return jax.lax.fori_loop(0, passes, halve, (lo_N, hi_N))[0]


_CPU_BLOCK_BYTES = 2 * 2**20  # one core's L2 here: the bisection's 31 passes over a row block stay in cache


def _nucleus_keys(teacher_logp_NxV):
  """(high, low) float keys of each token's distance from the row's most probable token.

  The float32 bit patterns of (max log-prob - log-prob) are ordered like the values (non-negative
  floats); split into the high 23 bits and the low 8 bits, each is exact in float32.
  """
  distance_NxV = jnp.max(teacher_logp_NxV, axis=-1, keepdims=True) - teacher_logp_NxV
  bits_NxV = jax.lax.bitcast_convert_type(distance_NxV, jnp.int32)
  high_NxV = jnp.right_shift(bits_NxV, 8).astype(jnp.float32)  # < 2^23: exact in float32
  return high_NxV, jnp.bitwise_and(bits_NxV, 255).astype(jnp.float32)


def _kept(high_NxV, low_NxV, cut_Nx2):
  """1.0 on tokens below the high cut, and on those at it whose low bits are <= the low cut."""
  high_cut, low_cut = cut_Nx2[:, 0], cut_Nx2[:, 1]
  before = _below(high_NxV, high_cut)
  on_cut = _below(high_NxV, high_cut + 1.0) - before
  return before + on_cut * _below(low_NxV, low_cut + 1.0)


def _nucleus_cut(teacher_logp_NxV, top_p: float):
  """[N, 2]: the exact cut in the 31-bit keys, by bisection in two exact stages: 23 passes over the high
  23 bits, then 8 over the low 8 bits of the tokens that share the high cut."""
  high_NxV, low_NxV = _nucleus_keys(teacher_logp_NxV)
  probs_NxV = jnp.exp(teacher_logp_NxV)
  rows = teacher_logp_NxV.shape[0]
  zeros = jnp.zeros(rows, jnp.float32)
  high_cut = _bisect(high_NxV, probs_NxV, top_p, zeros, jnp.full(rows, 2.0**23), 23)
  # tokens below the high cut always count (-1), those above never (256), those on it by their low bits
  before = _below(high_NxV, high_cut)
  on_cut = _below(high_NxV, high_cut + 1.0) - before
  low_keys = -before + on_cut * low_NxV + (1.0 - before - on_cut) * 256.0
  low_cut = _bisect(low_keys, probs_NxV, top_p, zeros, jnp.full(rows, 256.0), 8)
  return jnp.stack([high_cut, low_cut], axis=-1)


def _nucleus_cut_in_blocks(teacher_logp_NxV, top_p: float):
  """The same cut found one block of rows at a time (CPU: each block's passes read from L2, not memory).

  Blocks hold at least 2 rows (one-row reductions compile to a slow form); rows added to fill the last
  block are dropped.
  """
  rows, vocab = teacher_logp_NxV.shape
  block = max(2, min(rows, _CPU_BLOCK_BYTES // (8 * vocab)))
  if block >= rows or rows * vocab * 8 <= 4 * _CPU_BLOCK_BYTES:  # small enough to stay in cache whole
    return _nucleus_cut(teacher_logp_NxV, top_p)
  num_blocks = -(-rows // block)
  block = -(-rows // num_blocks)  # as even as the blocks can be: the least padding
  padded = jnp.pad(teacher_logp_NxV, [(0, num_blocks * block - rows), (0, 0)])
  cuts = jax.lax.map(lambda x: _nucleus_cut(x, top_p), padded.reshape(num_blocks, block, vocab))
  return cuts.reshape(-1, 2)[:rows]


def top_p_mask(teacher_logp_NxV: jax.Array, top_p: float) -> jax.Array:
  """Nucleus mask (float 0/1) without sorting: a token is kept while the mass of strictly more probable
  tokens is < top_p.

  The cut (two floats per row) is what the 31 bisection passes find. On CPU the passes run over
  cache-sized blocks of rows (the same arithmetic per row, so the same cut).
  """
  logp = jax.lax.stop_gradient(teacher_logp_NxV)
  cut_Nx2 = jax.lax.platform_dependent(logp, top_p, cpu=_nucleus_cut_in_blocks, default=_nucleus_cut)
  return _kept(*_nucleus_keys(logp), cut_Nx2)


class TeacherTarget(NamedTuple):
  """What the divergence needs of the teacher at temperature T (no gradient flows into it)."""

  target_NxV: jax.Array  # target probabilities: kept teacher probs (renormalised, or raw with OTHER), 0 elsewhere
  log_target_NxV: jax.Array  # their logs, clamped to the float32 minimum where the target is 0
  other_mass_N: jax.Array | None  # pruned teacher mass (OTHER bucket); None without the bucket
  pruned_NxV: jax.Array | None  # 1.0 on pruned tokens (OTHER bucket), else None
  mass_kept_N: jax.Array  # teacher mass inside the kept set (1 without pruning)
  support_NxV: jax.Array | None = None  # 1.0 on the kept tokens when the target is renormalised over them


def teacher_probs(teacher_logits_NxV, temperature):
  """(probs, log-probs) at T with one exp pass."""
  x = jax.lax.stop_gradient(teacher_logits_NxV).astype(jnp.float32) / temperature
  shifted = x - jnp.max(x, axis=-1, keepdims=True)
  unnormalised = jnp.exp(shifted)
  total = jnp.sum(unnormalised, axis=-1, keepdims=True)
  return unnormalised / total, jnp.maximum(shifted - jnp.log(total), FLOAT_MIN)


def bucket_target(kept_NxV, p_NxV, logp_NxV, other_mass_N, mass_kept_N) -> TeacherTarget:
  """Kept teacher probabilities as they are (not renormalised); the pruned rest is one OTHER bucket."""
  pruned = 1.0 - kept_NxV  # float masks: multiplying vectorises on CPU where selecting does not
  return TeacherTarget(kept_NxV * p_NxV, kept_NxV * logp_NxV + pruned * FLOAT_MIN, other_mass_N, pruned, mass_kept_N)


def teacher_target(teacher_logits_NxV, temperature, top_k=None, top_p=None, use_other_bucket=False) -> TeacherTarget:
  """The teacher's (pruned, renormalised or OTHER-bucketed) target distribution at temperature T."""
  t_p, t_logp = teacher_probs(teacher_logits_NxV, temperature)
  return pruned_target(t_p, t_logp, jax.lax.stop_gradient(teacher_logits_NxV), top_k, top_p, use_other_bucket)


def pruned_target(t_p, t_logp, rank_NxV, top_k=None, top_p=None, use_other_bucket=False) -> TeacherTarget:
  """Target probabilities (and logs) at T pruned to the top-k by `rank_NxV` or to the nucleus of t_p."""
  rows, vocab = t_p.shape
  prune_k = bool(top_k) and top_k < vocab
  prune_p = bool(top_p) and top_p < 1.0
  if not (prune_k or prune_p):
    return TeacherTarget(t_p, t_logp, None, None, jnp.ones((rows,), jnp.float32))
  kept = top_k_mask(rank_NxV, top_k) if prune_k else top_p_mask(t_logp, top_p)
  kept_p = kept * t_p
  mass_kept = jnp.sum(kept_p, axis=-1)
  if use_other_bucket:
    other_mass = jnp.sum((1.0 - kept) * t_p, axis=-1)  # summed, not 1 - kept: no cancellation
    return bucket_target(kept, t_p, t_logp, other_mass, mass_kept)
  pruned = 1.0 - kept
  log_mass = jnp.log(mass_kept)[:, None]
  return TeacherTarget(
    kept_p / mass_kept[:, None], kept * (t_logp - log_mass) + pruned * FLOAT_MIN, None, None, mass_kept, kept
  )


def mixture_probs(teacher_logits, weights, temperature):
  """(probs, log-probs) of sum_i w_i softmax(z_i / T) for weights summing to 1 (one teacher: exactly its own).

  The logs come from a log-sum-exp over the teachers, so tokens whose mixture probability underflows
  keep a finite, exact log."""
  parts = [teacher_probs(z, temperature) for z in teacher_logits]
  probs = sum(w * p for w, (p, _) in zip(weights, parts, strict=True))
  log_weighted = jnp.stack([jnp.log(jnp.float32(w)) + logp for w, (_, logp) in zip(weights, parts, strict=True)])
  return probs, jnp.maximum(jax.nn.logsumexp(log_weighted, axis=0), FLOAT_MIN)


def mixed_logits(teacher_logits, weights):
  """sum_i w_i z_i: its softmax at T is the normalised product of the teachers' p_i(T)^w_i (their log-probs'
  weighted mean, renormalised), at every T, because each log-sum-exp is a per-row constant."""
  return sum(w * jax.lax.stop_gradient(z).astype(jnp.float32) for w, z in zip(weights, teacher_logits, strict=True))


def ensemble_target(teacher_logits, weights, mode: str, temperature, top_k=None, top_p=None, other=False):
  """The target of an ensemble at T (`mode` probs: the mixture; logprobs: the geometric mean), pruned as a whole."""
  if mode == "logprobs":
    return teacher_target(mixed_logits(teacher_logits, weights), temperature, top_k, top_p, other)
  t_p, t_logp = mixture_probs(teacher_logits, weights, temperature)
  return pruned_target(t_p, t_logp, t_logp, top_k, top_p, other)


def renormalized(target: TeacherTarget) -> TeacherTarget:
  """An OTHER-bucket target renormalised over its kept tokens (a cached top-k's `renormalize_both`)."""
  kept = 1.0 - target.pruned_NxV
  log_mass = jnp.log(target.mass_kept_N)[:, None]
  return TeacherTarget(
    target.target_NxV / target.mass_kept_N[:, None],
    kept * (target.log_target_NxV - log_mass) + target.pruned_NxV * FLOAT_MIN,
    None,
    None,
    target.mass_kept_N,
    kept,
  )


def cache_fields(teacher_logits_NxV, top_k: int, temperatures, value_dtype):
  """What the save job stores per token: top-k raw logits, their ids, log-sum-exp at each T ([N, n_T])."""
  logits = teacher_logits_NxV.astype(jnp.float32)
  values_NxK, ids_NxK = jax.lax.top_k(logits, top_k)
  lse_NxT = jnp.stack([jax.nn.logsumexp(logits / t, axis=-1) for t in temperatures], axis=-1)
  return values_NxK.astype(value_dtype), ids_NxK.astype(jnp.int32), lse_NxT


def teacher_lse_at(values_NxK, lse_NxT, temperature, lse_index: int | None):
  """lse_T: stored (lse_index), or estimated from T = 1 by a flat tail at the k-th logit.

  The estimate keeps the exact tail mass at T = 1, M = 1 - sum_I p_i, and assumes the tail holds
  n = M exp(lse_1 - z_k) tokens all at the smallest cached logit z_k: tail(T) = n exp(z_k / T). It is
  exact at T = 1 and whenever the tail really is flat.
  """
  if lse_index is not None:
    return lse_NxT[:, lse_index]
  z = values_NxK.astype(jnp.float32)
  lse_1 = lse_NxT[:, 0]
  tail_1 = 1.0 - jnp.sum(jnp.exp(z - lse_1[:, None]), axis=-1)
  z_min = z[:, -1]
  log_tail_t = jnp.log(jnp.maximum(tail_1, 1e-30)) + lse_1 - z_min + z_min / temperature
  head_t = jax.nn.logsumexp(z / temperature, axis=-1)
  return jnp.where(tail_1 > 1e-7, jnp.logaddexp(head_t, log_tail_t), head_t)


def cached_target(values_NxK, ids_NxK, lse_N, temperature, vocab: int) -> TeacherTarget:
  """The exact (k+1)-way target of a cached top-k: p_i = exp(z_i / T - lse_T) on the cached ids, the
  rest of the teacher's mass (1 - their sum) one OTHER bucket; in the dense form the online path uses."""
  rows = jnp.arange(ids_NxK.shape[0])[:, None]
  logp_NxK = jnp.maximum(values_NxK.astype(jnp.float32) / temperature - lse_N[:, None], FLOAT_MIN)
  p_NxK = jnp.exp(logp_NxK)
  zeros = jnp.zeros((ids_NxK.shape[0], vocab), jnp.float32)
  kept = zeros.at[rows, ids_NxK].set(1.0)
  mass_kept_N = jnp.sum(p_NxK, axis=-1)
  has_tail_N = (jnp.sum(1.0 - kept, axis=-1) > 0).astype(jnp.float32)
  other_mass_N = jnp.maximum(1.0 - mass_kept_N, 0.0) * has_tail_N
  return bucket_target(
    kept, zeros.at[rows, ids_NxK].set(p_NxK), zeros.at[rows, ids_NxK].set(logp_NxK), other_mass_N, mass_kept_N
  )
