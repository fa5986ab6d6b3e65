"""Per-step values of the KD weights and temperature: constant, linear or cosine over the run."""

from __future__ import annotations

import math

import jax.numpy as jnp


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


def step_metrics(config, with_features: bool):
  """`values(step)`: the per-step values logged as they are (not token sums)."""

  def values(step):
    out = {"kd/alpha": alpha_at(config, step), "kd/temperature": temperature_at(config, step)}
    if with_features:
      out["kd/beta"] = beta_at(config, step)
    return out

  return values
