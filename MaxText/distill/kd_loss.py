"""The one per-chunk KD assembly, for every kind of teacher: CE on labels blended with the KD term.

`kd_chunk_sums` projects the student's chunk of hidden states to logits, asks the teacher source for
its chunk (live logits, cached top-k, ...) and sums, with the token weights:
  total = (1 - alpha) CE + alpha KD + z-loss,  KD = T^2 KL_T(teacher || student)  (or, with hard
  labels, the student's CE against the teacher's argmax),
plus the diagnostics every run logs (KL at T = 1, top-1 agreement, the teacher's own CE). The diagnostics
cost full passes over the chunk's logits, so a training step computes them only when its metrics are
logged (`shared["diagnose"]`, objective.py); their logged value is then that step's, a mean over
DIAGNOSED_TOKENS. With T = 1 and an unpruned forward KL the KD term is the KL@T1 and is not computed twice.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from MaxText.config.views import kd_vocab
from MaxText.distill.sources import TeacherSource
from MaxText.losses.cross_entropy import cross_entropy_with_logits, project_logits
from MaxText.losses.divergences import kd_divergence

DIAGNOSED_TOKENS = "kd/diagnosed_tokens"  # tokens the diagnostics below were computed on (0 on skipped steps)
# also kd/<ensemble member>/<one of these>; teacher_prob_of_student_top1: the teacher's probability (T = 1)
# of the student's argmax token (1 when they agree and the teacher is sure; a soft top-1 agreement);
# expected_acceptance_T1: sum_x min(p_teacher(x), q_student(x)) = 1 - TVD at T = 1, the share of its tokens
# the teacher would keep with the student as a speculative-decoding draft sampling at temperature 1
# (greedy drafting keeps top1_agreement's share)
_DIAGNOSTICS = ("kl_div_T1", "top1_agreement", "teacher_prob_of_student_top1", "expected_acceptance_T1", "teacher_loss")
# a teacher with its own tokenizer adds these (distill/cross_tokenizer.py); they are read as ratios of each other
CROSS_TOKENIZER_TERMS = (
  "aligned_bytes",
  "student_aligned_nats",
  "teacher_aligned_nats",
  "aligned_heads",
  "exact_heads",
  "student_tokens",
)


def is_diagnostic(name: str) -> bool:
  """A metric (name without `_sum`) that is computed on diagnosed steps only: a mean over DIAGNOSED_TOKENS."""
  return name.startswith("kd/") and name.rsplit("/", 1)[-1] in _DIAGNOSTICS + CROSS_TOKENIZER_TERMS


@dataclasses.dataclass(frozen=True)
class KDOptions:
  """The static (compile-time) choices of the KD term that do not depend on the kind of teacher."""

  use_hard_labels: bool
  z_loss: float
  temperature_is_one: bool  # the KD term is the KL@T1 diagnostic itself (T = 1, unpruned forward KL, live teacher)
  kd_vocab: int | None = None  # compare the first kd_vocab logits only (the student's rows beyond are padding)

  @classmethod
  def from_config(cls, config) -> KDOptions:
    unpruned = (not config.kd_top_k or config.kd_top_k >= kd_vocab(config)) and not 0 < config.kd_top_p < 1
    return cls(
      config.kd_use_hard_labels,
      config.z_loss_multiplier,
      config.kd_temperature_schedule == "constant"
      and config.kd_temperature == 1.0
      and unpruned
      and config.kd_divergence == "forward_kl"
      and not config.kd_use_hard_labels
      and not config.kd_offline_data_dir,
      kd_vocab(config) if kd_vocab(config) < config.vocab_size else None,
    )


def kd_chunk_sums(xs: dict, shared: dict, options: KDOptions, source: TeacherSource) -> dict:
  """Summed KD-run terms of one token chunk. `shared` holds the unembedding(s), alpha and T, and may hold
  `diagnose` (a traced bool; absent = True): whether this step computes the diagnostics."""
  s_logits = project_logits(xs["hidden"], shared["w_DxV"])
  teacher = source.chunk(xs, shared)
  weights, alpha, temperature = xs["weights"], shared["alpha"], shared["temperature"]
  ce_N, z_N = cross_entropy_with_logits(s_logits, xs["targets"], options.z_loss)
  hard_N = ce_N - z_N
  if options.kd_vocab:  # the KD terms see the shared vocabulary only; the labels' CE sees every row
    s_logits = s_logits[:, : options.kd_vocab]
  frozen_student = jax.lax.stop_gradient(s_logits)
  if options.use_hard_labels:
    kd_N, _ = cross_entropy_with_logits(s_logits, teacher.top1_N)
    kl_at_t_N = kd_divergence(frozen_student, teacher.target_t1(), 1.0)  # the KL@T1 is the hard run's "KL at T"
    mass_kept_N = jnp.ones_like(kl_at_t_N)
    kl_t1_N = kl_at_t_N
  else:
    kl_at_t_N, mass_kept_N = teacher.divergence(s_logits, temperature)
    kd_N = temperature * temperature * kl_at_t_N
    kl_t1_N = jax.lax.stop_gradient(kl_at_t_N) if options.temperature_is_one else None
  sums = blended_sums(weights, alpha, hard_N, z_N, kd_N, {"kl_div_at_T": kl_at_t_N, "teacher_mass_kept": mass_kept_N})
  diagnostics = lambda: _diagnostic_sums(teacher, frozen_student, kl_t1_N, weights)
  diagnose = shared.get("diagnose", True)
  if diagnose is True:
    return sums | diagnostics()
  skipped = lambda: jax.tree.map(jnp.zeros_like, jax.eval_shape(diagnostics))
  return sums | jax.lax.cond(diagnose, diagnostics, skipped)


def _diagnostic_sums(teacher, frozen_student, kl_t1_N, weights) -> dict:
  """Fidelity to the teacher: KL@T1 (unpruned teacher), top-1 agreement, the teacher's probability of the
  student's top-1 token, and the teacher's own terms, summed with the token weights. A teacher whose
  predictions apply at some tokens only (`diagnostic_mask_N`, another tokenizer's) is compared there."""
  own = {f"kd/{name}_sum": jnp.sum(x * weights) for name, x in teacher.own_terms(frozen_student).items()}
  mask_N = getattr(teacher, "diagnostic_mask_N", None)
  weights = weights if mask_N is None else weights * mask_N
  target = teacher.target_t1()
  if kl_t1_N is None:
    kl_t1_N = kd_divergence(frozen_student, target, 1.0)
  student_top1_N = jnp.argmax(frozen_student, axis=-1)
  agree_N = (student_top1_N == teacher.top1_N).astype(jnp.float32)
  prob_N = jnp.take_along_axis(target.target_NxV, student_top1_N[:, None], axis=-1)[:, 0]
  per_token = {
    "kl_div_T1": kl_t1_N,
    "top1_agreement": agree_N,
    "teacher_prob_of_student_top1": prob_N,
    "expected_acceptance_T1": expected_acceptance(target, frozen_student),
  }
  sums = {f"kd/{name}_sum": jnp.sum(x * weights) for name, x in per_token.items()}
  return own | sums | {DIAGNOSED_TOKENS: jnp.sum(weights)}


def expected_acceptance(target, student_logits_NxV) -> jax.Array:
  """sum_x min(p(x), q(x)) per token, p the teacher's target at T = 1 and q the student's softmax; with an
  OTHER bucket the pruned tokens count as one outcome (min of the two masses outside the kept set)."""
  q_NxV = jax.nn.softmax(student_logits_NxV.astype(jnp.float32), axis=-1)
  overlap_N = jnp.sum(jnp.minimum(target.target_NxV, q_NxV), axis=-1)
  if target.other_mass_N is not None and target.pruned_NxV is not None:
    overlap_N = overlap_N + jnp.minimum(target.other_mass_N, jnp.sum(q_NxV * target.pruned_NxV, axis=-1))
  return overlap_N


def blended_sums(weights, alpha, hard_N, z_N, kd_N, kd_terms: dict) -> dict:
  """total = (1 - a) CE + a KD + z per token; it and every term summed with the token weights.

  (1 - a) * CE exactly equals CE at a = 0, so alpha = 0 reproduces the plain CE run's losses.
  """
  total_N = (1.0 - alpha) * hard_N + alpha * kd_N + z_N
  weighted = lambda x: jnp.sum(x * weights)
  sums = {
    "total_loss_sum": weighted(total_N),
    "ce_sum": weighted(hard_N),
    "z_loss_sum": weighted(z_N),
    "tokens": jnp.sum(weights),
    "kd/soft_loss_sum": weighted(kd_N),
  }
  return sums | {f"kd/{name}_sum": weighted(x) for name, x in kd_terms.items()}
