"""The loss functions under the names MaxText users know; the implementations live in `MaxText.losses`.

`kl_divergence_between_logits` takes full logits of any leading shape: the public, unchunked form of
the per-token KD divergence the trainer evaluates chunk by chunk.
"""

from __future__ import annotations

from MaxText.losses.chunking import chunked_sums
from MaxText.losses.cross_entropy import ce_chunk_sums, cross_entropy_with_logits, project_logits
from MaxText.losses.divergences import kd_divergence
from MaxText.losses.logit_kl import kl_to_teacher_logits
from MaxText.losses.targets import TeacherTarget, teacher_target, top_k_mask, top_p_mask

__all__ = [
  "TeacherTarget",
  "ce_chunk_sums",
  "chunked_sums",
  "cross_entropy_with_logits",
  "kd_divergence",
  "kl_divergence_between_logits",
  "project_logits",
  "teacher_target",
  "top_k_mask",
  "top_p_mask",
]


def kl_divergence_between_logits(
  student_logits, teacher_logits, temperature, top_k=None, top_p=None, use_other_bucket=False
):
  """Per-token KL(teacher_T || student_T) in float32 (not multiplied by T^2; the loss does that).

  Logits of any leading shape [..., V] in any float dtype. top_k / top_p prune the teacher
  distribution (0 or None = off; k >= V or p >= 1 = off); the kept teacher probabilities are
  renormalised, or with `use_other_bucket` the pruned teacher mass and the student's mass outside
  the kept set form one extra OTHER bucket. The student always uses full-vocabulary log-probs.
  Edges: never negative; +inf where the teacher puts mass on what the student rules out (a -inf logit,
  a row of them, or no student mass outside the kept set while the OTHER bucket has some).
  """
  if top_k and top_p:
    raise ValueError("kd_top_k and kd_top_p are exclusive")
  lead, vocab = student_logits.shape[:-1], student_logits.shape[-1]
  student_NxV, teacher_NxV = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
  value_N, _ = kl_to_teacher_logits(student_NxV, teacher_NxV, temperature, top_k or 0, top_p or 0.0, use_other_bucket)
  return value_N.reshape(lead)
