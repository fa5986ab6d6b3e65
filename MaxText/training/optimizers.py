"""AdamW with linear warmup + cosine decay, global-norm clipping and decoupled weight decay."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(config) -> optax.Schedule:
  warmup = int(config.warmup_steps_fraction * config.steps)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(config.steps, warmup + 1),
    end_value=config.learning_rate * config.cosine_learning_rate_final_fraction,
  )


def weight_decay_mask(logical_axes):
  """Decay every parameter except norm scales (identified by their logical `norm` axis)."""
  return jax.tree.map(lambda axes: "norm" not in axes, logical_axes, is_leaf=lambda t: isinstance(t, tuple))


def create_optimizer(config, logical_axes) -> optax.GradientTransformation:
  parts = []
  if config.gradient_clipping_threshold > 0:
    parts.append(optax.clip_by_global_norm(config.gradient_clipping_threshold))
  parts.append(
    optax.adamw(
      learning_rate_schedule(config),
      b1=config.adam_b1,
      b2=config.adam_b2,
      eps=config.adam_eps,
      weight_decay=config.adam_weight_decay,
      mask=weight_decay_mask(logical_axes),
    )
  )
  return optax.chain(*parts)
