"""Offline distillation: the KD loss from cached teacher top-k logits and log-sum-exps (no teacher model).

Normalisations (`kd_offline_normalization`), with p the teacher and q the student at temperature T,
I the cached ids:
- other_bucket: p_i = exp(z_i / T - lse_T) exactly; the tail I^c is one bucket of teacher mass
  1 - sum_I p_i against the student's full-vocabulary mass outside I: the proper (k+1)-way KL. With
  k = vocab it is the full KL; for k < vocab it equals the online top-k + OTHER-bucket loss.
- renormalize_both: p and q both renormalised over I, a k-way KL (ignores how much mass each puts
  outside I).
- student_full: p renormalised over I against the student's full-vocabulary log-probs: the
  cross-entropy form most public implementations use. Not a divergence (not 0 when q = p: the teacher
  mass outside I is reassigned to I), and it pushes the student's mass into I.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from MaxText import max_utils
from MaxText import model as model_lib
from MaxText.distillation import alpha_at, blended_sums, temperature_at
from MaxText.train_step import run_decoder, token_inputs

_FLOAT_MIN = float(jnp.finfo(jnp.float32).min)


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


def other_bucket_target(values_NxK, ids_NxK, lse_N, temperature, vocab: int) -> max_utils.TeacherTarget:
  """The (k+1)-way target in the dense form `max_utils.kd_divergence` takes (the same code as online)."""
  rows = jnp.arange(ids_NxK.shape[0])[:, None]
  logp_NxK = jnp.maximum(values_NxK.astype(jnp.float32) / temperature - lse_N[:, None], _FLOAT_MIN)
  p_NxK = jnp.exp(logp_NxK)
  zeros = jnp.zeros((ids_NxK.shape[0], vocab), jnp.float32)
  kept = zeros.at[rows, ids_NxK].set(1.0)
  pruned = 1.0 - kept
  mass_kept_N = jnp.sum(p_NxK, axis=-1)
  has_tail_N = (jnp.sum(pruned, axis=-1) > 0).astype(jnp.float32)
  other_mass_N = jnp.maximum(1.0 - mass_kept_N, 0.0) * has_tail_N
  log_target = zeros.at[rows, ids_NxK].set(logp_NxK) + pruned * _FLOAT_MIN
  return max_utils.TeacherTarget(zeros.at[rows, ids_NxK].set(p_NxK), log_target, other_mass_N, pruned, mass_kept_N)


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


@dataclasses.dataclass(frozen=True)
class OfflineOptions:
  normalization: str
  use_hard_labels: bool
  z_loss: float
  vocab: int
  lse_index: int | None  # column of the stored lse at the run's (constant) T; None = estimate


def offline_divergence(s_logits, xs, temperature, options: OfflineOptions):
  """(KL at T per token, teacher mass inside the cached ids)."""
  values, ids, lse_NxT = xs["teacher_values"], xs["teacher_ids"], xs["teacher_lse"]
  lse_N = teacher_lse_at(values, lse_NxT, temperature, options.lse_index)
  target = other_bucket_target(values, ids, lse_N, temperature, options.vocab)
  if options.normalization == "other_bucket":
    return max_utils.kd_divergence(s_logits, target, temperature), target.mass_kept_N
  student_full = options.normalization == "student_full"
  return renormalized_divergence(s_logits, values, ids, temperature, student_full), target.mass_kept_N


def offline_chunk_sums(xs: dict, shared: dict, options: OfflineOptions) -> dict:
  s_logits = max_utils.project_logits(xs["hidden"], shared["w_DxV"])
  weights, alpha, temperature = xs["weights"], shared["alpha"], shared["temperature"]
  ce_N, z_N = max_utils.cross_entropy_with_logits(s_logits, xs["targets"], options.z_loss)
  hard_N = ce_N - z_N
  teacher_top1_N = xs["teacher_ids"][:, 0]
  frozen_student = jax.lax.stop_gradient(s_logits)
  target_t1 = other_bucket_target(xs["teacher_values"], xs["teacher_ids"], xs["teacher_lse"][:, 0], 1.0, options.vocab)
  kl_t1_N = max_utils.kd_divergence(frozen_student, target_t1, 1.0)  # the (k+1)-way KL at T = 1
  if options.use_hard_labels:
    kd_N, _ = max_utils.cross_entropy_with_logits(s_logits, teacher_top1_N)
    kl_at_t_N, mass_kept_N = kl_t1_N, jnp.ones_like(kl_t1_N)
  else:
    kl_at_t_N, mass_kept_N = offline_divergence(s_logits, xs, temperature, options)
    kd_N = temperature * temperature * kl_at_t_N
  agree_N = (jnp.argmax(frozen_student, axis=-1) == teacher_top1_N).astype(jnp.float32)
  per_token = {"kl_div_at_T": kl_at_t_N, "kl_div_T1": kl_t1_N, "teacher_mass_kept": mass_kept_N}
  return blended_sums(weights, alpha, hard_N, z_N, kd_N, {**per_token, "top1_agreement": agree_N})


def lse_index(config, temperatures: list[float]) -> int | None:
  """Column of the run's constant temperature among the cached ones; None when it must be estimated."""
  if config.kd_temperature_schedule != "constant":
    return None
  matches = [i for i, t in enumerate(temperatures) if abs(t - config.kd_temperature) <= 1e-6 * t]
  return matches[0] if matches else None


def make_offline_kd_loss(config, temperatures: list[float]):
  """`loss_sums(config, graphdef, params, batch, teacher_params, step)` reading the teacher from the batch."""
  options = OfflineOptions(
    config.kd_offline_normalization,
    config.kd_use_hard_labels,
    config.z_loss_multiplier,
    config.vocab_size,
    lse_index(config, temperatures),
  )

  def loss_sums(config, graphdef, params, batch, teacher_params, step):
    del teacher_params  # the teacher is the cache
    student = model_lib.bind(graphdef, params)
    per_token = token_inputs(run_decoder(student, batch).hidden_BxLxD, batch)
    k = batch["teacher_ids"].shape[-1]
    per_token["teacher_values"] = batch["teacher_values"].reshape(-1, k)
    per_token["teacher_ids"] = batch["teacher_ids"].reshape(-1, k)
    lse_BxLxT = jnp.swapaxes(batch["teacher_lse"], 1, 2)
    per_token["teacher_lse"] = lse_BxLxT.reshape(-1, lse_BxLxT.shape[-1])
    shared = {
      "w_DxV": student.output_matrix_DxV(),
      "alpha": alpha_at(config, step),
      "temperature": temperature_at(config, step),
    }
    chunk_fn = functools.partial(offline_chunk_sums, options=options)
    sums = max_utils.chunked_sums(chunk_fn, per_token, shared, config.loss_chunk_size)
    return sums["total_loss_sum"], sums

  return loss_sums
