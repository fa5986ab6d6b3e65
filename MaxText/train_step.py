"""The pure training and eval steps: `train_step(state, teacher_params, batch) -> (state, metrics)`.

Losses are handled as token-weighted sums: each micro-batch returns summed per-token terms and a
token count, gradients are taken of the sum, and the update divides by the step's total token
count. Gradient accumulation, data parallelism and logging windows therefore all average over
tokens, never over means.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from MaxText import max_utils
from MaxText import model as model_lib
from MaxText.optimizers import learning_rate_schedule

BATCH_KEYS = ("inputs", "inputs_position", "inputs_segmentation", "targets", "targets_segmentation")


def token_inputs(hidden_BxLxD, batch) -> dict:
  """Flattens what the chunked loss needs to one token axis."""
  return {
    "hidden": hidden_BxLxD.reshape(-1, hidden_BxLxD.shape[-1]),
    "targets": batch["targets"].reshape(-1),
    "weights": (batch["targets_segmentation"] != 0).reshape(-1).astype(jnp.float32),
  }


def run_decoder(model, batch, return_features: bool = False):
  return model(batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"], return_features)


def student_loss_sums(config, graphdef, params, batch) -> tuple[jax.Array, dict]:
  """(objective sum to differentiate, dict of summed metrics) of the plain cross-entropy run."""
  model = model_lib.bind(graphdef, params)
  sums = max_utils.chunked_sums(
    functools.partial(max_utils.ce_chunk_sums, z_loss=config.z_loss_multiplier),
    token_inputs(run_decoder(model, batch).hidden_BxLxD, batch),
    {"w_DxV": model.output_matrix_DxV()},
    config.loss_chunk_size,
  )
  return sums["ce_sum"] + sums["z_loss_sum"], sums


def _split_micro_batches(batch: dict, num: int) -> dict:
  return jax.tree.map(lambda x: x.reshape(num, x.shape[0] // num, *x.shape[1:]), batch)


def make_train_step(config, graphdef, tx, loss_sums=student_loss_sums, step_metrics=None):
  """Builds the step; `loss_sums(config, graphdef, params, batch[, teacher_params, step])` is pluggable and
  `step_metrics(step)` adds per-step values (KD's alpha and temperature) to the metrics."""
  schedule = learning_rate_schedule(config)

  def grads_and_sums(params, teacher_params, batch, step):
    def objective(p, micro_batch):
      if teacher_params is None:
        return loss_sums(config, graphdef, p, micro_batch)
      return loss_sums(config, graphdef, p, micro_batch, teacher_params, step)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    num = config.gradient_accumulation_steps
    if num == 1:
      (_, sums), grads = grad_fn(params, batch)
      return grads, sums

    def accumulate(carry, micro_batch):
      (_, sums), grads = grad_fn(params, micro_batch)
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    micro_batches = _split_micro_batches(batch, num)
    (_, sums_shape), grads_shape = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro_batches))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, sums_shape))
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, micro_batches)
    return grads, sums

  def train_step(state, teacher_params, batch):
    grads, sums = grads_and_sums(state["params"], teacher_params, batch, state["step"])
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums["tokens"], 1.0), grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
      "step": state["step"] + 1,
      "params": optax.apply_updates(state["params"], updates),
      "opt_state": opt_state,
    }
    metrics = {**sums, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state["step"])}
    if step_metrics is not None:
      metrics.update(step_metrics(state["step"]))
    return new_state, metrics

  return train_step


def make_eval_step(config, graphdef, loss_sums=student_loss_sums):
  def eval_step(params, teacher_params, batch, step):
    if teacher_params is None:
      return loss_sums(config, graphdef, params, batch)[1]
    return loss_sums(config, graphdef, params, batch, teacher_params, step)[1]

  return eval_step
