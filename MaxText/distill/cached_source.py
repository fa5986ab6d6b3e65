"""The cached top-k teacher of offline distillation: the signal rides in the batch, no teacher model runs.

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

import jax
import jax.numpy as jnp

from MaxText.distill.sources import TeacherInputs
from MaxText.losses.divergence_family import Divergence, divergence
from MaxText.losses.divergences import renormalized_divergence
from MaxText.losses.targets import TeacherTarget, cached_target, renormalized, teacher_lse_at


@dataclasses.dataclass(frozen=True)
class CachedChunk:
  values_NxK: jax.Array  # top-k raw teacher logits, largest first
  ids_NxK: jax.Array
  lse_NxT: jax.Array  # full-vocabulary log-sum-exp at each cached temperature (T = 1 first)
  source: CachedTopKTeacher

  @property
  def top1_N(self) -> jax.Array:
    return self.ids_NxK[:, 0]

  def target_t1(self) -> TeacherTarget:  # the (k+1)-way distribution at T = 1
    return cached_target(self.values_NxK, self.ids_NxK, self.lse_NxT[:, 0], 1.0, self.source.vocab)

  def divergence(self, student_logits_NxV, temperature):
    lse_N = teacher_lse_at(self.values_NxK, self.lse_NxT, temperature, self.source.lse_index)
    target = cached_target(self.values_NxK, self.ids_NxK, lse_N, temperature, self.source.vocab)
    kind = self.source.kind
    if self.source.normalization == "other_bucket":
      return divergence(student_logits_NxV, target, temperature, kind), target.mass_kept_N
    if kind.name != "forward_kl":  # renormalize_both (student_full is forward KL only: kd_checks)
      return divergence(student_logits_NxV, renormalized(target), temperature, kind), target.mass_kept_N
    student_full = self.source.normalization == "student_full"
    kl_N = renormalized_divergence(student_logits_NxV, self.values_NxK, self.ids_NxK, temperature, student_full)
    return kl_N, target.mass_kept_N

  def own_terms(self, frozen_student_NxV) -> dict:
    return {}  # only the top-k is cached: no teacher cross-entropy


@dataclasses.dataclass(frozen=True)
class CachedTopKTeacher:
  """Teacher top-k logits and log-sum-exps read from the cache with the batch (see data/teacher_cache.py)."""

  normalization: str
  vocab: int
  lse_index: int | None  # column of the run's constant T among the cached ones; None = estimated
  kind: Divergence = Divergence()
  param_shardings: None = None
  in_eval: bool = False

  def inputs(self, teacher_state, batch: dict, features: str | None) -> TeacherInputs:
    del teacher_state, features  # the cache is the teacher; features are not cached
    k = batch["teacher_ids"].shape[-1]
    lse_BxLxT = jnp.swapaxes(batch["teacher_lse"], 1, 2)
    per_token = {
      "teacher_values": batch["teacher_values"].reshape(-1, k),
      "teacher_ids": batch["teacher_ids"].reshape(-1, k),
      "teacher_lse": lse_BxLxT.reshape(-1, lse_BxLxT.shape[-1]),
    }
    return TeacherInputs(per_token, {}, None)

  def chunk(self, xs: dict, shared: dict) -> CachedChunk:
    return CachedChunk(xs["teacher_values"], xs["teacher_ids"], xs["teacher_lse"], self)
