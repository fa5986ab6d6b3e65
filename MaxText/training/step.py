"""The pure training and eval steps: `train_step(state, teacher, batch) -> (state, metrics)`.

Both take the objective as `loss_fn(trainables, batch, step, teacher)` (distill/objective.py), the same
signature for plain, online-KD and offline-KD runs; `teacher` is whatever the teacher source needs
(None when it needs nothing). Losses are handled as token-weighted sums: each micro-batch returns
summed per-token terms and a token count, gradients are taken of the sum, and the update divides by
the step's total token count. Gradient accumulation, data parallelism and logging windows therefore
all average over tokens, never over means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from MaxText.distill.objective import make_loss_fn
from MaxText.distill.schedules import step_metrics
from MaxText.training import state as state_lib
from MaxText.training.optimizers import learning_rate_schedule


def _split_micro_batches(batch: dict, num: int) -> dict:
  return jax.tree.map(lambda x: x.reshape(num, x.shape[0] // num, *x.shape[1:]), batch)


def make_train_step(config, tx, loss_fn, step_metrics=None):
  """Builds the step; `step_metrics(step)` adds per-step values (KD's alpha and temperature) to the metrics."""
  schedule = learning_rate_schedule(config)

  def grads_and_sums(trainables, teacher, batch, step):
    grad_fn = jax.value_and_grad(lambda t, micro_batch: loss_fn(t, micro_batch, step, teacher), has_aux=True)
    num = config.gradient_accumulation_steps
    if num == 1:
      (_, sums), grads = grad_fn(trainables, batch)
      return grads, sums

    def accumulate(carry, micro_batch):
      (_, sums), grads = grad_fn(trainables, micro_batch)
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    micro_batches = _split_micro_batches(batch, num)
    (_, sums_shape), grads_shape = jax.eval_shape(grad_fn, trainables, jax.tree.map(lambda x: x[0], micro_batches))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, sums_shape))
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, micro_batches)
    return grads, sums

  def train_step(state, teacher, batch):
    trainables = state_lib.trainables(state)
    grads, sums = grads_and_sums(trainables, teacher, batch, state["step"])
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums["tokens"], 1.0), grads)
    params = state_lib.optimized(trainables)
    updates, opt_state = tx.update(state_lib.optimized(grads), state["opt_state"], params)
    updated = state_lib.from_optimized(optax.apply_updates(params, updates), state_lib.HEAD in trainables)
    new_state = {"step": state["step"] + 1, **updated, "opt_state": opt_state}
    metrics = {**sums, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state["step"])}
    if step_metrics is not None:
      metrics.update(step_metrics(state["step"]))
    return new_state, metrics

  return train_step


def jit_train_step(config, layout, source, batch_sharding):
  """The run's train step, jitted with its shardings and the state donated; `source` None = plain CE."""
  loss_fn = make_loss_fn(config, layout.graphdef, source, layout.alignment, diagnose_every_step=False)
  kd_metrics = step_metrics(config, layout.alignment is not None) if source is not None else None
  teacher_shardings = source.param_shardings if source is not None else None
  return jax.jit(
    make_train_step(config, layout.tx, loss_fn, kd_metrics),
    in_shardings=(layout.state_shardings, teacher_shardings, batch_sharding),
    out_shardings=(layout.state_shardings, None),
    donate_argnums=(0,),
  )


def make_eval_step(loss_fn):
  """`eval_step(trainables, teacher, batch, step) -> summed metrics` (no gradient, no update)."""

  def eval_step(trainables, teacher, batch, step):
    return loss_fn(trainables, batch, step, teacher)[1]

  return eval_step
