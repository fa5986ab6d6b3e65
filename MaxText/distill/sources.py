"""Where the KD assembly gets the teacher's signal: one interface, one implementation per kind of teacher.

A `TeacherSource` does two things. `inputs` runs once per batch, outside the token-chunk loop: a live
teacher runs its decoder there, a cached teacher takes its top-k fields from the batch. `chunk` runs
inside the loop on one chunk of tokens and returns a `TeacherChunk`, which answers what the assembly
in kd_loss.py asks: the teacher's top-1 token, its distribution at T = 1, the divergence of the
student from it at T, and any per-token terms of its own. A new kind of teacher (an ensemble, scored
generations) is one new pair of classes (ensemble.py is one); the step, the loop and the assembly stay as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from MaxText.losses.cross_entropy import cross_entropy_with_logits, project_logits
from MaxText.losses.divergence_family import Divergence, divergence
from MaxText.losses.logit_kl import kl_to_teacher_logits
from MaxText.losses.logit_mse import logit_mse
from MaxText.losses.targets import TeacherTarget, teacher_target
from MaxText.model import decoder


class TeacherInputs(NamedTuple):
  per_token: dict  # [N, ...] arrays sliced into chunks with the student's
  shared: dict  # arrays every chunk sees whole (a teacher unembedding)
  features: Any  # the teacher decoder's features for feature KD ([layers, B, L, D] or a q/k/v triple), when asked for


class TeacherChunk(Protocol):
  top1_N: jax.Array

  def target_t1(self) -> TeacherTarget:
    """The teacher's distribution at T = 1, unpruned (the KL@T1 diagnostic compares against it)."""

  def divergence(self, student_logits_NxV: jax.Array, temperature) -> tuple[jax.Array, jax.Array]:
    """(per-token `kd_divergence` of the student from the teacher's target at T, teacher mass kept)."""

  def own_terms(self, frozen_student_NxV: jax.Array) -> dict[str, jax.Array]:
    """Per-token diagnostics only this kind of teacher has (logged as kd/<name>), given the student's
    logits without gradient."""


class TeacherSource(Protocol):
  param_shardings: Any  # shardings of the teacher state the step is given (None: it takes none)
  in_eval: bool  # eval batches carry this teacher's signal (a cache does not cover the eval split)

  def inputs(self, teacher_state, batch: dict, features: str | None) -> TeacherInputs: ...

  def chunk(self, xs: dict, shared: dict) -> TeacherChunk: ...


@dataclasses.dataclass(frozen=True)
class Pruning:
  """How the live teacher's distribution is cut: top-k or top-p, renormalised or with an OTHER bucket."""

  top_k: int = 0
  top_p: float = 0.0
  use_other_bucket: bool = False

  @classmethod
  def from_config(cls, config) -> Pruning:
    return cls(config.kd_top_k, config.kd_top_p, config.kd_use_other_bucket)


@dataclasses.dataclass(frozen=True)
class LiveChunk:
  logits_NxV: jax.Array  # the teacher's, float32, no gradient
  targets_N: jax.Array
  pruning: Pruning
  kind: Divergence

  @property
  def top1_N(self) -> jax.Array:
    return jnp.argmax(self.logits_NxV, axis=-1)

  def target_t1(self) -> TeacherTarget:
    return teacher_target(self.logits_NxV, 1.0)

  def divergence(self, student_logits_NxV, temperature):
    p = self.pruning
    if self.kind.name == "forward_kl":  # from the logits: no [N, V] target arrays
      logits = self.logits_NxV
      return kl_to_teacher_logits(student_logits_NxV, logits, temperature, p.top_k, p.top_p, p.use_other_bucket)
    if self.kind.name == "mse":  # on the logits, over the kept set when pruned (T is 1: the config says why)
      kept = teacher_target(self.logits_NxV, temperature, p.top_k or None, p.top_p or None)
      mse_N = logit_mse(student_logits_NxV, self.logits_NxV, kept.support_NxV) / (temperature * temperature)
      return mse_N, kept.mass_kept_N
    target = teacher_target(self.logits_NxV, temperature, p.top_k or None, p.top_p or None, p.use_other_bucket)
    return divergence(student_logits_NxV, target, temperature, self.kind), target.mass_kept_N

  def own_terms(self, frozen_student_NxV) -> dict:
    del frozen_student_NxV  # the KL@T1 to the student is the assembly's own diagnostic
    return {"teacher_loss": cross_entropy_with_logits(self.logits_NxV, self.targets_N)[0]}

  def cache_logits(self) -> jax.Array:
    """What the offline save job caches: logits whose softmax at any T is this teacher's distribution."""
    return self.logits_NxV


@dataclasses.dataclass(frozen=True)
class LiveTeacher:
  """A frozen teacher model run forward in the same step; its logits are projected chunk by chunk."""

  config: Any
  graphdef: Any
  param_shardings: Any
  pruning: Pruning = Pruning()
  kind: Divergence = Divergence()
  vocab: int | None = None  # keep the first `vocab` logits (kd_vocab_size: the rest is the teacher's padding)
  in_eval: bool = True

  def inputs(self, teacher_params, batch: dict, features: str | None) -> TeacherInputs:
    model = decoder.bind(self.graphdef, jax.lax.stop_gradient(teacher_params))
    out = decoder.run_on_batch(model, batch, features)
    hidden = jax.lax.stop_gradient(out.hidden_BxLxD)
    per_token = {"teacher_hidden": hidden.reshape(-1, hidden.shape[-1])}
    return TeacherInputs(per_token, {"teacher_w_DxV": model.output_matrix_DxV()}, out.features)

  def chunk(self, xs: dict, shared: dict) -> LiveChunk:
    w_DxV = shared["teacher_w_DxV"]
    logits = jax.lax.stop_gradient(
      project_logits(xs["teacher_hidden"], w_DxV[:, : self.vocab] if self.vocab else w_DxV)
    )
    return LiveChunk(logits, xs["targets"], self.pruning, self.kind)
