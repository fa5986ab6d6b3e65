"""In-loop distillation: schedules, the frozen teacher, and the KD loss assembled per token chunk.

The KD loss plugs into `train_step` as its `loss_sums`: the teacher's decoder runs forward in the same
jitted step under stop_gradient, and both models' output projections happen chunk by chunk inside
`max_utils.chunked_sums`, so neither model's full logits are ever held.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from MaxText import checkpointing, feature_distillation, max_utils, pyconfig, sharding
from MaxText import model as model_lib
from MaxText.train_state import init_params
from MaxText.train_step import run_decoder, token_inputs


def schedule_value(start: float, end: float, kind: str, step, total_steps: int):
  """constant: start; linear: s + (e - s) p; cosine: e + (s - e)(1 + cos(pi p)) / 2; p = clip(step / steps, 0, 1)."""
  if kind == "constant":
    return jnp.asarray(start, jnp.float32)
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
  if kind == "linear":
    return start + (end - start) * progress
  return end + (start - end) * (1.0 + jnp.cos(math.pi * progress)) / 2.0


def alpha_at(config, step):
  return schedule_value(config.kd_alpha, config.kd_alpha_end, config.kd_alpha_schedule, step, config.steps)


def beta_at(config, step):
  return schedule_value(config.kd_beta, config.kd_beta_end, config.kd_beta_schedule, step, config.steps)


def temperature_at(config, step):
  return schedule_value(
    config.kd_temperature, config.kd_temperature_end, config.kd_temperature_schedule, step, config.steps
  )


@dataclasses.dataclass(frozen=True)
class KDOptions:
  """The static (compile-time) choices of the KD term."""

  top_k: int
  top_p: float
  use_other_bucket: bool
  use_hard_labels: bool
  z_loss: float
  temperature_is_one: bool  # constant T = 1: the KL at T and at 1 are the same computation

  @classmethod
  def from_config(cls, config) -> KDOptions:
    return cls(
      config.kd_top_k,
      config.kd_top_p,
      config.kd_use_other_bucket,
      config.kd_use_hard_labels,
      config.z_loss_multiplier,
      config.kd_temperature_schedule == "constant" and config.kd_temperature == 1.0,
    )


def kd_chunk_sums(xs: dict, shared: dict, options: KDOptions) -> dict:
  """Summed KD-run terms of one token chunk. `shared` holds both unembeddings, alpha and T."""
  s_logits = max_utils.project_logits(xs["hidden"], shared["w_DxV"])
  t_logits = jax.lax.stop_gradient(max_utils.project_logits(xs["teacher_hidden"], shared["teacher_w_DxV"]))
  weights, targets = xs["weights"], xs["targets"]
  alpha, temperature = shared["alpha"], shared["temperature"]
  ce_N, z_N = max_utils.cross_entropy_with_logits(s_logits, targets, options.z_loss)
  hard_N = ce_N - z_N
  teacher_ce_N, _ = max_utils.cross_entropy_with_logits(t_logits, targets)
  teacher_top1_N = jnp.argmax(t_logits, axis=-1)
  frozen_student = jax.lax.stop_gradient(s_logits)
  kl_t1_N = max_utils.kd_divergence(frozen_student, max_utils.teacher_target(t_logits, 1.0), 1.0)
  if options.use_hard_labels:
    kd_N, _ = max_utils.cross_entropy_with_logits(s_logits, teacher_top1_N)
    kl_at_t_N, mass_kept_N = kl_t1_N, jnp.ones_like(kl_t1_N)
  else:
    target = max_utils.teacher_target(
      t_logits, temperature, options.top_k or None, options.top_p or None, options.use_other_bucket
    )
    kl_at_t_N = max_utils.kd_divergence(s_logits, target, temperature)
    kd_N, mass_kept_N = temperature * temperature * kl_at_t_N, target.mass_kept_N
  agree_N = (jnp.argmax(frozen_student, axis=-1) == teacher_top1_N).astype(jnp.float32)
  per_token = {"teacher_loss": teacher_ce_N, "kl_div_at_T": kl_at_t_N, "kl_div_T1": kl_t1_N}
  per_token.update(teacher_mass_kept=mass_kept_N, top1_agreement=agree_N)
  return blended_sums(weights, alpha, hard_N, z_N, kd_N, per_token)


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


@dataclasses.dataclass(frozen=True)
class Teacher:
  config: object
  graphdef: object
  param_shardings: object


def make_kd_loss(config, teacher: Teacher):
  """`loss_sums(config, graphdef, params, batch, teacher_params, step)` for `make_train_step`."""
  options = KDOptions.from_config(config)
  with_features = pyconfig.uses_features(dataclasses.asdict(config))

  def loss_sums(config, graphdef, params, batch, teacher_params, step):
    student = model_lib.bind(graphdef, params)
    teacher_model = model_lib.bind(teacher.graphdef, jax.lax.stop_gradient(teacher_params))
    student_out = run_decoder(student, batch, with_features)
    teacher_out = run_decoder(teacher_model, batch, with_features)
    per_token = token_inputs(student_out.hidden_BxLxD, batch)
    hidden = jax.lax.stop_gradient(teacher_out.hidden_BxLxD)
    per_token["teacher_hidden"] = hidden.reshape(-1, hidden.shape[-1])
    shared = {
      "w_DxV": student.output_matrix_DxV(),
      "teacher_w_DxV": teacher_model.output_matrix_DxV(),
      "alpha": alpha_at(config, step),
      "temperature": temperature_at(config, step),
    }
    sums = max_utils.chunked_sums(
      functools.partial(kd_chunk_sums, options=options), per_token, shared, config.loss_chunk_size
    )
    if with_features:
      projection = student.kd_projection[...] if hasattr(student, "kd_projection") else None
      feature_sum = feature_distillation.feature_loss_sum(
        config, student_out.features, teacher_out.features, projection, per_token["weights"]
      )
      sums["kd/feature_loss_sum"] = beta_at(config, step) * feature_sum
      sums["total_loss_sum"] = sums["total_loss_sum"] + sums["kd/feature_loss_sum"]
    return sums["total_loss_sum"], sums

  return loss_sums


def step_metrics(config):
  """Per-step values logged as they are (not token sums)."""
  with_features = pyconfig.uses_features(dataclasses.asdict(config))

  def values(step):
    out = {"kd/alpha": alpha_at(config, step), "kd/temperature": temperature_at(config, step)}
    if with_features:
      out["kd/beta"] = beta_at(config, step)
    return out

  return values


def load_teacher(config, mesh, layout) -> tuple[Teacher, object]:
  """The frozen teacher and its parameters, sharded on the student's mesh (parameters only, read-only)."""
  teacher_config = pyconfig.teacher_config(config)
  graphdef, abstract_params, logical_axes = model_lib.split_params(model_lib.abstract_model(teacher_config))
  shardings = sharding.logical_shardings(logical_axes, abstract_params, mesh)
  teacher = Teacher(teacher_config, graphdef, shardings)
  if config.kd_teacher_parameters_path:
    params = checkpointing.load_params(config.kd_teacher_parameters_path, abstract_params, shardings)
  elif config.load_parameters_path:  # self-distillation from the loaded starting point
    params = checkpointing.load_params(config.load_parameters_path, abstract_params, shardings)
  else:  # self-distillation: the student's initial parameters are a pure function of the seed, so a resumed run
    params = init_params(config, layout)  # rebuilds exactly the same teacher
  return teacher, params
