"""Eval passes: the trainer's periodic eval and `eval_only=true`, which scores one saved model (a run's
step folder, a converted Hugging Face / GGUF model, a pruned student, a teacher) on the eval split and
trains nothing.

Both read the same eval stream from its start (the held-out documents or eval_dataset_path), `eval_steps`
global batches of it, so an eval-only pass over a run's checkpoint reproduces that run's eval at the
checkpoint's step.
"""

from __future__ import annotations

import jax

from MaxText.data import input_pipeline
from MaxText.distill.objective import make_loss_fn
from MaxText.model.params_io import load_params
from MaxText.parallel import sharding
from MaxText.training.metrics import eval_record
from MaxText.training.runtime import build_corpus, global_batch_size, to_global
from MaxText.training.state import make_layout


def eval_sums(config, corpus, eval_step, trainables, teacher, batch_sharding, step) -> dict:
  """Token-weighted sums of the eval step over `eval_steps` batches of the eval split."""
  local_batch = global_batch_size(config) // jax.process_count()
  batches = input_pipeline.make_iterator(config, corpus, "eval", local_batch)
  total = None
  for _ in range(config.eval_steps):
    sums = eval_step(trainables, teacher, to_global(next(batches), batch_sharding), step)
    host = {k: float(v) for k, v in jax.device_get(sums).items()}
    total = host if total is None else {k: total[k] + host[k] for k in total}
  return total


def evaluate_checkpoint(config) -> dict[str, float]:
  """eval_only: the model in load_parameters_path on the eval split; prints and returns its record."""
  mesh = sharding.create_mesh(config)
  corpus = build_corpus(config)
  layout = make_layout(config, mesh, None)  # abstract: no optimizer state is allocated
  params = load_params(config.load_parameters_path, layout.abstract_state["params"], layout.param_shardings)
  batch_sharding = sharding.batch_sharding(mesh)
  loss_fn = make_loss_fn(config, layout.graphdef, None, None)
  step_fn = jax.jit(
    lambda trainables, batch: loss_fn(trainables, batch, 0, None)[1],
    in_shardings=({"params": layout.param_shardings}, batch_sharding),
  )
  with jax.set_mesh(mesh):
    sums = eval_sums(config, corpus, lambda t, _, b, __: step_fn(t, b), {"params": params}, None, batch_sharding, 0)
  record = eval_record(sums)
  if jax.process_index() == 0:
    print(
      f"eval_only {config.load_parameters_path}: loss {record['loss']:.6f} | perplexity {record['perplexity']:.4f} "
      f"({int(sums['tokens'])} tokens in {config.eval_steps} batches)",
      flush=True,
    )
  return record
