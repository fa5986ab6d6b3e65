"""A live teacher with its own tokenizer: it reads the batch's teacher stream, the student its own.

The input pipeline (data/two_stream.py) aligns the two token streams into groups covering the same
bytes. At a group's first student token (a *head*) both models have read the same text, so their
next-token distributions are compared there; other student tokens get only the CE term (alpha's
(1 - alpha) part; their KD term is 0). Per head, by `kd_cross_tokenizer_loss`:
  uld   ULD (losses/cross_vocab.uld_distance): sorted probabilities at T, no token map needed;
  gold  where the group is one token on each side and its string is in both vocabularies (the
        student's target maps to the teacher's through the byte-string map), the forward KL against the
        teacher's distribution projected onto the student's vocabulary (cross_vocab.projected_target:
        shared strings map to themselves, other teacher tokens to the student token they start with),
        weighted by kd_gold_exact_weight; at every other head ULD, weighted by kd_gold_uld_weight.
The assembly in kd_loss.py applies alpha, T^2 and the schedules as for any teacher. With one tokenizer
on both sides every token is an exact head and `gold` is today's forward KL.

Tokenizer-independent metrics come from the aligned text: the student's and the teacher's summed
nats over it and its bytes (bits per byte = nats / bytes / ln 2), and how many student tokens are
heads and exact heads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from MaxText.distill.sources import TeacherInputs
from MaxText.losses.cross_entropy import cross_entropy_with_logits, project_logits
from MaxText.losses.cross_vocab import projected_from_probs, projected_target, shared_mass, uld_where_needed
from MaxText.losses.divergences import kd_divergence
from MaxText.losses.targets import teacher_probs
from MaxText.model import decoder


def _teacher_stream(batch: dict) -> dict:
  return {
    "inputs": batch["teacher_inputs"],
    "inputs_position": batch["teacher_inputs_position"],
    "inputs_segmentation": batch["teacher_inputs_segmentation"],
  }


def _aligned_nats_per_row(hidden_BxLxD, w_DxV, targets_BxL, aligned_BxL, chunk: int) -> jax.Array:
  """[B]: the teacher's summed CE over its aligned targets, projected `chunk` tokens at a time."""
  batch, length, width = hidden_BxLxD.shape
  n = batch * length
  chunk = max(1, min(chunk or n, n))
  padded = -(-n // chunk) * chunk
  pad = lambda x: jnp.pad(x.reshape(n, *x.shape[2:]), [(0, padded - n)] + [(0, 0)] * (x.ndim - 2))
  hidden, targets = pad(hidden_BxLxD).reshape(-1, chunk, width), pad(targets_BxL).reshape(-1, chunk)

  def nats(xs):
    return cross_entropy_with_logits(project_logits(xs[0], w_DxV), xs[1])[0]

  per_token = jax.lax.map(nats, (hidden, targets)).reshape(-1)[:n].reshape(batch, length)
  return jnp.sum(per_token * aligned_BxL, axis=-1)


def _on_first_target(row_values_B: jax.Array, targets_segmentation_BxL: jax.Array) -> jax.Array:
  """[B, L]: each row's value at its first student target that carries weight, 0 elsewhere. Per-token sums
  are weighted by targets_segmentation, so a row value must sit on a weighted token: in a conversation
  the first tokens (system prompt, user turn) weigh 0. A row without targets keeps nothing; its teacher
  side is masked the same way (data/two_stream.py), so there is nothing to keep."""
  first_B = jnp.argmax(targets_segmentation_BxL > 0, axis=1)
  rows_B = jnp.arange(row_values_B.shape[0])
  return jnp.zeros(targets_segmentation_BxL.shape, jnp.float32).at[rows_B, first_B].set(row_values_B)


@dataclasses.dataclass(frozen=True)
class CrossTokenizerChunk:
  logits_NxV: jax.Array  # the teacher's at each head (its own vocabulary), float32, no gradient
  student_to_teacher_V: jax.Array  # [student vocab]: teacher id of the same string, -1 where none
  teacher_to_student_V: jax.Array  # [teacher vocab]: the student token its string starts with, -1 where none
  xs: dict  # the chunk's batch fields
  loss: str
  exact_weight: float
  uld_weight: float

  @property
  def diagnostic_mask_N(self) -> jax.Array:
    """Fidelity diagnostics (KL@T1, agreement) are taken at heads only: elsewhere no teacher prediction applies."""
    return self.xs["kd_head"].astype(jnp.float32)

  @property
  def exact_N(self) -> jax.Array:
    """Heads of one-token groups whose token is in both vocabularies (the target maps to the teacher's)."""
    mapped = jnp.take(self.student_to_teacher_V, self.xs["targets"])
    return (self.xs["kd_single"] * (mapped == self.xs["kd_teacher_target"])).astype(jnp.float32)

  @property
  def top1_N(self) -> jax.Array:
    """The student token the teacher's top-1 starts with (-1 for a special the student lacks)."""
    return jnp.take(self.teacher_to_student_V, jnp.argmax(self.logits_NxV, axis=-1))

  def target_t1(self):
    return projected_target(self.logits_NxV, self.teacher_to_student_V, self.student_to_teacher_V.shape[0], 1.0)

  def divergence(self, student_logits_NxV, temperature):
    """(per-token term, the teacher's mass at T on strings both vocabularies hold)."""
    head_N = self.xs["kd_head"].astype(jnp.float32)
    p_NxVt, _ = teacher_probs(self.logits_NxV, temperature)  # once, for every term below
    kept_N = shared_mass(p_NxVt, self.teacher_to_student_V, self.student_to_teacher_V)
    uld = lambda needed_N: uld_where_needed(student_logits_NxV, p_NxVt, temperature, needed_N > 0)
    if self.loss == "uld":
      return uld(head_N), kept_N
    target = projected_from_probs(p_NxVt, self.teacher_to_student_V, student_logits_NxV.shape[-1])
    exact_N = self.exact_N * head_N
    kl_N = jnp.where(exact_N > 0, kd_divergence(student_logits_NxV, target, temperature), 0.0)
    return self.exact_weight * exact_N * kl_N + self.uld_weight * uld(head_N * (1.0 - exact_N)), kept_N

  def own_terms(self, frozen_student_NxV) -> dict:
    xs = self.xs
    aligned = xs["kd_aligned"].astype(jnp.float32)
    return {
      "aligned_bytes": xs["kd_bytes"].astype(jnp.float32) * aligned,
      "student_aligned_nats": cross_entropy_with_logits(frozen_student_NxV, xs["targets"])[0] * aligned,
      "teacher_aligned_nats": xs["teacher_row_nats"],
      "aligned_heads": xs["kd_head"].astype(jnp.float32),
      "exact_heads": self.exact_N,
      "student_tokens": jnp.ones_like(aligned),
    }


@dataclasses.dataclass(frozen=True)
class CrossTokenizerTeacher:
  """A frozen teacher on its own token stream; its hidden states at the heads are projected chunk by chunk."""

  config: Any  # the teacher's model Config
  graphdef: Any
  param_shardings: Any
  student_to_teacher: np.ndarray  # [student vocab] teacher id of the same byte string, -1 where none
  teacher_to_student: np.ndarray  # [teacher vocab] the student token its string starts with, -1 where none
  loss: str = "gold"
  exact_weight: float = 1.0
  uld_weight: float = 1.0
  chunk_size: int = 0
  in_eval: bool = True

  takes_diagnose = True  # objective.py passes whether this step computes diagnostics (the teacher's nats)

  def inputs(self, teacher_params, batch: dict, features: str | None, diagnose=True) -> TeacherInputs:
    """`diagnose` (a traced bool or True): the teacher's own loss over its aligned text, for bits per byte,
    costs a projection of every teacher token onto its vocabulary; steps whose metrics are not logged skip it."""
    del features  # refused with another tokenizer (config checks)
    model = decoder.bind(self.graphdef, jax.lax.stop_gradient(teacher_params))
    hidden_BxLtxD = jax.lax.stop_gradient(decoder.run_on_batch(model, _teacher_stream(batch)).hidden_BxLxD)
    heads_BxLs = batch["kd_teacher_head"]
    at_heads = jnp.take_along_axis(hidden_BxLtxD, heads_BxLs[..., None], axis=1)
    w_DxV = model.output_matrix_DxV()
    nats = lambda: _aligned_nats_per_row(
      hidden_BxLtxD, w_DxV, batch["teacher_targets"], batch["teacher_targets_segmentation"] > 0, self.chunk_size
    )
    skipped = lambda: jnp.zeros(hidden_BxLtxD.shape[:1], jnp.float32)
    row_nats_B = nats() if diagnose is True else jax.lax.cond(diagnose, nats, skipped)
    row_nats_BxLs = _on_first_target(row_nats_B, batch["targets_segmentation"])
    per_token = {
      "teacher_hidden": at_heads.reshape(-1, at_heads.shape[-1]),
      "kd_teacher_target": jnp.take_along_axis(batch["teacher_targets"], heads_BxLs, axis=1).reshape(-1),
      "teacher_row_nats": row_nats_BxLs.reshape(-1),
      **{name: batch[name].reshape(-1) for name in ("kd_head", "kd_single", "kd_aligned", "kd_bytes")},
    }
    return TeacherInputs(per_token, {"teacher_w_DxV": w_DxV}, None)

  def chunk(self, xs: dict, shared: dict) -> CrossTokenizerChunk:
    logits = jax.lax.stop_gradient(project_logits(xs["teacher_hidden"], shared["teacher_w_DxV"]))
    maps = jnp.asarray(self.student_to_teacher), jnp.asarray(self.teacher_to_student)
    return CrossTokenizerChunk(logits, *maps, xs, self.loss, self.exact_weight, self.uld_weight)
