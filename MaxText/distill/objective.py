"""The training objective with one signature for every run: `loss_fn(trainables, batch, step, teacher)`.

- `trainables`: {"params": the student decoder's parameters, "kd_head": the feature head (feature KD only)};
- `teacher`: the teacher state the source needs (a live teacher's parameters; None for a cache or a
  plain run); it is never differentiated.
It returns (the objective's token sum, a dict of summed metrics). Without a teacher source it is the
plain cross-entropy run; with one, the KD assembly of kd_loss.py runs per token chunk, whatever the
kind of teacher.
"""

from __future__ import annotations

import functools

import jax

from MaxText.config.views import FeatureAlignment
from MaxText.distill.feature_head import PROJECTION, decoder_features, feature_loss_sum
from MaxText.distill.kd_loss import KDOptions, kd_chunk_sums
from MaxText.distill.schedules import alpha_at, beta_at, temperature_at
from MaxText.distill.sources import TeacherSource
from MaxText.losses.chunking import chunked_loss, token_inputs
from MaxText.losses.cross_entropy import ce_chunk_sums
from MaxText.model import decoder


def is_logged_step(config, step):
  """Whether the trainer logs the metrics of the step that starts at optimizer step `step` (traced): every
  log_period-th step and the last one (the trainer numbers steps from 1)."""
  number = step + 1
  return (number % config.log_period == 0) | (number == config.steps)


def make_loss_fn(
  config,
  graphdef,
  source: TeacherSource | None = None,
  alignment: FeatureAlignment | None = None,
  diagnose_every_step: bool = True,
):
  """`diagnose_every_step` False (the train step): KD diagnostics only on the steps whose metrics are logged."""
  if source is None:
    chunk_fn = functools.partial(ce_chunk_sums, z_loss=config.z_loss_multiplier)
  else:
    chunk_fn = functools.partial(kd_chunk_sums, options=KDOptions.from_config(config), source=source)
  with_features = alignment is not None
  features = decoder_features(alignment)

  def loss_fn(trainables, batch, step, teacher):
    student = decoder.bind(graphdef, trainables["params"])
    student_out = decoder.run_on_batch(student, batch, features)
    per_token = token_inputs(student_out.hidden_BxLxD, batch)
    shared = {"w_DxV": student.output_matrix_DxV()}
    if source is None:
      ce = lambda sums: sums["ce_sum"] + sums["z_loss_sum"]
      return chunked_loss(chunk_fn, per_token, shared, config.loss_chunk_size, ce)
    diagnose = True if diagnose_every_step else is_logged_step(config, step)
    if getattr(source, "takes_diagnose", False):  # a source with diagnostics of its own to skip (cross_tokenizer.py)
      teacher_inputs = source.inputs(teacher, batch, features, diagnose=diagnose)
    else:
      teacher_inputs = source.inputs(teacher, batch, features)
    per_token.update(teacher_inputs.per_token)
    shared.update(teacher_inputs.shared, alpha=alpha_at(config, step), temperature=temperature_at(config, step))
    if not diagnose_every_step:
      shared["diagnose"] = diagnose
    total, sums = chunked_loss(chunk_fn, per_token, shared, config.loss_chunk_size, lambda s: s["total_loss_sum"])
    if with_features:
      projection = trainables["kd_head"][PROJECTION] if alignment.projection_shape else None
      feature_sum = feature_loss_sum(
        alignment,
        student_out.features,
        teacher_inputs.features,
        projection,
        per_token["weights"],
        batch["inputs_segmentation"],
      )
      sums["kd/feature_loss_sum"] = beta_at(config, step) * feature_sum
      total = total + sums["kd/feature_loss_sum"]
      sums["total_loss_sum"] = sums["total_loss_sum"] + jax.lax.stop_gradient(sums["kd/feature_loss_sum"])
    return total, sums

  return loss_fn
