"""Several frozen teachers as one teacher source (`kd_teachers`): their combined distribution is the target.

Each member is a `LiveTeacher` (its own preset, overrides, checkpoint and dtype). The members run
forward one after another in the same step; inside the token-chunk loop their logits are projected
for the chunk only, combined at temperature T (`kd_ensemble`: `probs`, the weighted mixture
sum_i w_i p_i(T); `logprobs`, the renormalised weighted mean of their log-probs, which is the softmax
of sum_i w_i z_i / T), and the ensemble's distribution is pruned (top-k / top-p, renormalised or with
an OTHER bucket) and compared with the chosen divergence exactly as a single teacher's would be. No
full [tokens, vocab] logits of any model exist beyond one chunk. Each member also reports its own CE
on the labels and KL(member || student) at T = 1 as kd/<name>/teacher_loss and kd/<name>/kl_div_T1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from MaxText.distill.sources import LiveTeacher, Pruning, TeacherInputs
from MaxText.losses.cross_entropy import cross_entropy_with_logits
from MaxText.losses.divergence_family import Divergence, divergence
from MaxText.losses.logit_kl import kl_to_teacher_logits
from MaxText.losses.targets import TeacherTarget, ensemble_target, mixed_logits, mixture_probs


@dataclasses.dataclass(frozen=True)
class EnsembleChunk:
  logits: tuple  # each member's [N, V] float32 logits, no gradient
  weights: tuple[float, ...]  # normalised to sum to 1
  mode: str  # probs | logprobs
  names: tuple[str, ...]
  targets_N: jax.Array
  pruning: Pruning
  kind: Divergence

  def _target(self, temperature, pruning: Pruning | None = None) -> TeacherTarget:
    p = pruning or Pruning()
    return ensemble_target(
      self.logits, self.weights, self.mode, temperature, p.top_k or None, p.top_p or None, p.use_other_bucket
    )

  @property
  def top1_N(self) -> jax.Array:
    return jnp.argmax(self.cache_logits(), axis=-1)

  def target_t1(self) -> TeacherTarget:
    return self._target(1.0)

  def _logits_at_every_t(self) -> jax.Array | None:
    """Logits whose softmax at every T is this ensemble's target at T: the geometric mean's weighted logits,
    or a lone member's own; None for a mixture of several members' probabilities."""
    if self.mode == "logprobs":
      return mixed_logits(self.logits, self.weights)
    return self.logits[0] if len(self.logits) == 1 else None

  def divergence(self, student_logits_NxV, temperature):
    p = self.pruning
    logits = self._logits_at_every_t()
    if logits is not None and self.kind.name == "forward_kl":  # as LiveChunk
      return kl_to_teacher_logits(student_logits_NxV, logits, temperature, p.top_k, p.top_p, p.use_other_bucket)
    target = self._target(temperature, self.pruning)
    return divergence(student_logits_NxV, target, temperature, self.kind), target.mass_kept_N

  def own_terms(self, frozen_student_NxV) -> dict:
    log_t1 = self.target_t1().log_target_NxV
    terms = {"teacher_loss": -jnp.take_along_axis(log_t1, self.targets_N[:, None], axis=-1)[:, 0]}
    for name, logits in zip(self.names, self.logits, strict=True):
      terms[f"{name}/teacher_loss"] = cross_entropy_with_logits(logits, self.targets_N)[0]
      terms[f"{name}/kl_div_T1"] = kl_to_teacher_logits(frozen_student_NxV, logits, 1.0)[0]
    return terms

  def cache_logits(self) -> jax.Array:
    """logprobs: sum_i w_i z_i (exact at every T); probs: the mixture's log-probs at T = 1 (exact at T = 1;
    at another T a cache made from them gives the mixture sharpened by 1/T, not the mixture of tempered
    members, which the live ensemble uses)."""
    if self.mode == "logprobs":
      return mixed_logits(self.logits, self.weights)
    return mixture_probs(self.logits, self.weights, 1.0)[1]


def _suffixed(tree: dict, index: int) -> dict:
  return {f"{key}@{index}": value for key, value in tree.items()}


def _member_view(tree: dict, index: int) -> dict:
  """The entries of member `index` (their suffix dropped) plus the ones every member shares (no suffix)."""
  own = {key.rsplit("@", 1)[0]: v for key, v in tree.items() if key.endswith(f"@{index}")}
  return {key: v for key, v in tree.items() if "@" not in key} | own


@dataclasses.dataclass(frozen=True)
class EnsembleTeacher:
  """Frozen teachers whose combined distribution is the KD target; its state is the tuple of their parameters."""

  members: tuple[LiveTeacher, ...]
  weights: tuple[float, ...]
  mode: str
  names: tuple[str, ...]
  pruning: Pruning = Pruning()
  kind: Divergence = Divergence()
  in_eval: bool = True

  @property
  def param_shardings(self):
    return tuple(member.param_shardings for member in self.members)

  def inputs(self, teacher_params, batch: dict, features: str | None) -> TeacherInputs:
    if features:
      raise ValueError("feature KD aligns with one teacher; the config check refuses it with kd_teachers")
    per_token, shared = {}, {}
    for index, (member, params) in enumerate(zip(self.members, teacher_params, strict=True)):
      got = member.inputs(params, batch, None)
      per_token.update(_suffixed(got.per_token, index))
      shared.update(_suffixed(got.shared, index))
    return TeacherInputs(per_token, shared, None)

  def chunk(self, xs: dict, shared: dict) -> EnsembleChunk:
    logits = tuple(
      member.chunk(_member_view(xs, i), _member_view(shared, i)).logits_NxV for i, member in enumerate(self.members)
    )
    return EnsembleChunk(logits, self.weights, self.mode, self.names, xs["targets"], self.pruning, self.kind)
