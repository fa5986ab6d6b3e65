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
index; a block of rows with a tie at some row's k-th logit takes the dense path, which breaks it that way.

The value and the gradient are computed together, one block of rows at a time, and the gradient is kept
for the backward pass (which only scales it). On CPU a block is a few rows (`_CPU_BLOCK_BYTES` per
[rows, V] array), so that the dozen [rows, V] intermediates of the statistics, the cut, the value and the
gradient stay in cache: the logits are read from memory once and the gradient written once, where the
whole chunk at once makes each intermediate a trip to memory (2.5x slower at 64 x 128256). On TPU and
GPU, whose compilers fuse the chunk, the chunk is one block.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from MaxText.losses.divergences import _weighted_logsumexp, kd_divergence
from MaxText.losses.targets import FLOAT_MIN, _nucleus_cut, teacher_target

_CPU_BLOCK_BYTES = 2**20  # per [rows, V] float32 array: 2 rows at 128k vocabulary, 8 at 32k


@dataclasses.dataclass(frozen=True)
class _Rule:
  """Which pruning: `kind` none / top_k / top_p, with its parameter, and the OTHER bucket or not."""

  kind: str
  top_k: int
  top_p: float
  with_other: bool


def _shifted_exps(x_NxV):
  """(each row's max, exp(x - max), the row's sum of those)."""
  max_N = jnp.max(x_NxV, axis=-1)
  exp_NxV = jnp.exp(x_NxV - max_N[:, None])
  return max_N, exp_NxV, jnp.sum(exp_NxV, axis=-1)


def _nucleus_limit(log_p_NxV, top_p: float):
  """The largest distance from the row's largest log p that the nucleus keeps: `top_p_mask`'s cut, as a
  float (the cut's 31 bits are the kept distances' float32 bit patterns, which order like them)."""
  cut_Nx2 = _nucleus_cut(log_p_NxV, top_p)
  bits_N = cut_Nx2[:, 0].astype(jnp.int32) * 256 + cut_Nx2[:, 1].astype(jnp.int32)
  return jax.lax.bitcast_convert_type(bits_N, jnp.float32)


def _kept(rule: _Rule, teacher_NxV, log_p_NxV, kth_logit_N):
  """1.0 on the kept teacher tokens of each row, else 0.0."""
  if rule.kind == "top_k":
    return (teacher_NxV >= kth_logit_N[:, None]).astype(jnp.float32)
  distance_NxV = jnp.max(log_p_NxV, axis=-1, keepdims=True) - log_p_NxV
  return (distance_NxV <= _nucleus_limit(log_p_NxV, rule.top_p)[:, None]).astype(jnp.float32)


def _other_bucket(x_NxV, kept_NxV, log_other_N, s_lse_N):
  """(the bucket's KL term, its share of the gradient's target): P_o (log P_o - log Q_o), and the bucket's
  mass spread over the pruned tokens in the student's own proportions."""
  bucket_lse_N = _weighted_logsumexp(jnp.maximum(x_NxV, FLOAT_MIN), 1.0 - kept_NxV)
  other_N = jnp.exp(log_other_N)
  term_N = jnp.where(other_N > 0, other_N * (log_other_N - bucket_lse_N + s_lse_N), 0.0)
  # the teacher's OTHER mass where the student has none outside K: +inf
  term_N = jnp.where((other_N > 0) & (bucket_lse_N <= 0.5 * FLOAT_MIN), jnp.inf, term_N)
  share_NxV = jnp.exp(jnp.minimum(x_NxV - bucket_lse_N[:, None], 0.0)) * (1.0 - kept_NxV)
  return term_N, other_N[:, None] * share_NxV


def _fused_rows(rule: _Rule, student_NxV, teacher_NxV, kth_logit_N, temperature):
  """(per-row KL, teacher mass kept, gradient of the KL's sum w.r.t. the student's logits, tokens kept),
  float32; `kth_logit_N` is the k-th largest teacher logit (top-k; else unused)."""
  # each side's exps are taken once, for its log-sum-exp, and divided by the total for its probabilities:
  # two exps per logit pair, as cross-entropy takes one per logit (the block is in cache, so keeping them
  # costs less than taking them again)
  # -inf logits are clamped to the float32 minimum (a row of them still has a maximum); where the teacher's
  # target has mass on one of them the KL is +inf, set below
  x = jnp.maximum(student_NxV.astype(jnp.float32) / temperature, FLOAT_MIN)
  s_max_N, s_exp, s_total_N = _shifted_exps(x)
  s_lse_N = s_max_N + jnp.log(s_total_N)
  log_q = x - s_lse_N[:, None]
  t_max_N, t_exp, t_total_N = _shifted_exps(teacher_NxV / temperature)
  log_p = jnp.maximum(teacher_NxV / temperature - t_max_N[:, None] - jnp.log(t_total_N)[:, None], FLOAT_MIN)
  p = t_exp / t_total_N[:, None]
  if rule.kind == "none":
    kept, w, log_w, mass_kept_N = None, p, log_p, jnp.ones_like(s_lse_N)
    kept_count_N = jnp.full_like(s_lse_N, teacher_NxV.shape[-1])
  else:
    kept = _kept(rule, teacher_NxV, log_p, kth_logit_N)
    mass_kept_N, kept_count_N = jnp.sum(kept * p, axis=-1), jnp.sum(kept, axis=-1)
    # the bucket's mass summed, not 1 - kept: no cancellation; log 0 = -inf where nothing was pruned
    log_other_N = jnp.log(jnp.sum((1.0 - kept) * p, axis=-1))
    log_w = log_p if rule.with_other else log_p - jnp.log(mass_kept_N)[:, None]
    w = kept * (p if rule.with_other else p / mass_kept_N[:, None])
  # where w = 0 the term is 0 (0 log 0), never a NaN
  value_N = jnp.sum(jnp.where(w > 0, w * (log_w - log_q), 0.0), axis=-1)
  ruled_out_N = jnp.sum(jnp.where(x <= FLOAT_MIN, w, 0.0), axis=-1) > 0  # teacher mass on a -inf student logit
  target = w
  if rule.with_other:
    term_N, share_NxV = _other_bucket(x, kept, log_other_N, s_lse_N)
    value_N, target = value_N + term_N, target + share_NxV
  q = s_exp / s_total_N[:, None]
  value_N = jnp.where(ruled_out_N, jnp.inf, jnp.maximum(value_N, 0.0))
  return value_N, mass_kept_N, (q - target) / temperature, kept_count_N


def _dense_rows(rule: _Rule, student_NxV, teacher_NxV, temperature):
  """`_fused_rows` through the dense target (a tie at the k-th logit: `top_k_mask` breaks it by index)."""
  target = teacher_target(teacher_NxV, temperature, rule.top_k, None, rule.with_other)
  value_N, pullback = jax.vjp(lambda s: kd_divergence(s, target, temperature), student_NxV.astype(jnp.float32))
  return value_N, target.mass_kept_N, pullback(jnp.ones_like(value_N))[0], jnp.sum(target.target_NxV > 0, axis=-1)


def _in_row_blocks(rule: _Rule, student_NxV, teacher_NxV, kth_logit_N, temperature):
  """`_fused_rows` over blocks of rows sized to the cache, written in place into the outputs.

  The blocks are as even as they can be, and the last one is moved back to end at the last row (it
  overlaps the one before, whose rows it computes again): padding the rows to a whole number of blocks
  would copy both [N, V] inputs.
  """
  rows, vocab = student_NxV.shape
  block = max(2, _CPU_BLOCK_BYTES // (4 * vocab))
  if block >= rows:
    return _fused_rows(rule, student_NxV, teacher_NxV, kth_logit_N, temperature)
  block = -(-rows // -(-rows // block))  # 1024 rows, 819 a block: two of 512, not a 2nd of 819 redoing 614

  def one_block(index, outputs):
    start = jnp.minimum(index * block, rows - block)
    inputs = [jax.lax.dynamic_slice_in_dim(x, start, block) for x in (student_NxV, teacher_NxV, kth_logit_N)]
    results = _fused_rows(rule, *inputs, temperature)
    return tuple(jax.lax.dynamic_update_slice_in_dim(o, r, start, 0) for o, r in zip(outputs, results, strict=True))

  per_row = jnp.zeros(rows, jnp.float32)
  zeros = (per_row, per_row, jnp.zeros((rows, vocab), jnp.float32), per_row)
  return jax.lax.fori_loop(0, -(-rows // block), one_block, zeros)


def _value_and_grad(rule: _Rule, student_NxV, teacher_NxV, temperature):
  """(value, mass kept, gradient): `_fused_rows` in cache-sized row blocks on CPU, whole elsewhere.

  Top-k with a tie at some row's k-th logit keeps more than k there: that chunk is computed again by
  the dense path, which keeps exactly k (ties of real teacher logits are rare; the check is a by-product).
  """
  kth_logit_N = jnp.zeros(teacher_NxV.shape[:1], jnp.float32)
  if rule.kind == "top_k":  # found once for the chunk: top_k over a few rows at a time is slower
    # the smallest of the k values, not the k-th by slicing: XLA CPU rewrites top_k + slice into a sort
    # of the whole row, ~100x slower at 128k
    kth_logit_N = jnp.min(jax.lax.top_k(teacher_NxV, rule.top_k)[0], axis=-1)
  args = (student_NxV, teacher_NxV, kth_logit_N, temperature)
  blocked, whole = functools.partial(_in_row_blocks, rule), functools.partial(_fused_rows, rule)
  fused = jax.lax.platform_dependent(*args, cpu=blocked, default=whole)
  if rule.kind != "top_k":
    return fused[:3]
  ties = jnp.any(fused[3] > rule.top_k)
  dense = lambda: _dense_rows(rule, student_NxV, teacher_NxV, temperature)[:3]
  return jax.lax.cond(ties, dense, lambda: fused[:3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _kl(rule: _Rule, student_dtype, student_NxV, teacher_NxV, temperature):
  return _kl_fwd(rule, student_dtype, student_NxV, teacher_NxV, temperature)[0]


def _kl_fwd(rule: _Rule, student_dtype, student_NxV, teacher_NxV, temperature):
  del student_dtype
  value_N, mass_kept_N, grad_NxV = _value_and_grad(rule, student_NxV, teacher_NxV, temperature)
  return (value_N, mass_kept_N), (grad_NxV, teacher_NxV, temperature)


def _kl_bwd(rule: _Rule, student_dtype, residuals, cotangents):
  del rule
  grad_NxV, teacher_NxV, temperature = residuals  # the gradient in float32, rounded once, here
  g_N = cotangents[0]  # the mass kept is a statistic of the teacher: no gradient
  student_grad = (g_N[:, None] * grad_NxV).astype(student_dtype)
  return student_grad, jnp.zeros_like(teacher_NxV), jnp.zeros_like(temperature)


_kl.defvjp(_kl_fwd, _kl_bwd)


def kl_to_teacher_logits(student_NxV, teacher_NxV, temperature, top_k=0, top_p=0.0, use_other_bucket=False):
  """(per-token KL(teacher target || student) at T, the teacher's mass kept): `teacher_target` +
  `kd_divergence` of the same pruning, without their [N, V] arrays."""
  vocab = teacher_NxV.shape[-1]
  kind = "top_k" if top_k and top_k < vocab else "top_p" if top_p and top_p < 1.0 else "none"
  rule = _Rule(kind, int(top_k or 0), float(top_p or 0.0), bool(use_other_bucket) and kind != "none")
  teacher = jax.lax.stop_gradient(teacher_NxV).astype(jnp.float32)
  temperature = jnp.asarray(temperature, jnp.float32)
  value_N, mass_kept_N = _kl(rule, jnp.dtype(student_NxV.dtype), student_NxV, teacher, temperature)
  return value_N, jax.lax.stop_gradient(mass_kept_N)
