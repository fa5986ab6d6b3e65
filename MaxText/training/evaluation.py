"""Eval passes: the trainer's periodic eval and `eval_only=true`, which scores one saved model (a run's
step folder, a converted Hugging Face / GGUF model, a pruned student, a teacher) on the eval split and
trains nothing. With a teacher (use_kd and a live teacher or ensemble), both also report the student's
fidelity to it: KL(teacher || student) at T = 1, top-1 agreement and the teacher's probability of the
student's top-1 token, token-weighted.

Both score the same batches (data/eval_set.py: `eval_steps` batches drawn across the eval split with a fixed
seed, or all of it with eval_steps=-1), so an eval-only pass over a run's checkpoint reproduces that run's
eval at the checkpoint's step.
"""

from __future__ import annotations

import jax

from MaxText.config.errors import ConfigError
from MaxText.data import eval_set
from MaxText.data.input_pipeline import MixtureCorpus
from MaxText.distill.objective import make_loss_fn
from MaxText.distill.teacher import build_teacher
from MaxText.model.params_io import load_params
from MaxText.parallel import sharding
from MaxText.training.metrics import eval_record, fidelity_text
from MaxText.training.runtime import build_corpus, global_batch_size, to_global
from MaxText.training.state import make_layout


def build_eval_sets(config, corpus) -> dict[str, eval_set.EvalSet]:
  """The eval set ("": one), or with dataset_mixture one per source, by name (each its own eval_steps batches)."""
  local_batch = global_batch_size(config) // jax.process_count()
  if isinstance(corpus, MixtureCorpus):
    return {name: eval_set.build(config, source, local_batch) for name, source in corpus.sources.items()}
  return {"": eval_set.build(config, corpus, local_batch)}


def _add(a: dict | None, b: dict) -> dict:
  return b if a is None else {k: a[k] + b[k] for k in a}


def eval_sums(chosen: eval_set.EvalSet, eval_step, trainables, teacher, batch_sharding, step) -> dict:
  """Token-weighted sums of the eval step over the chosen eval batches."""
  total = None
  for batch in chosen.batches:
    sums = eval_step(trainables, teacher, to_global(batch, batch_sharding), step)
    total = _add(total, {k: float(v) for k, v in jax.device_get(sums).items()})
  return total


def eval_pass(sets: dict[str, eval_set.EvalSet], eval_step, *args) -> tuple[dict, dict[str, dict]]:
  """(sums over every set, {source name: its sums} with a mixture, else {})."""
  per_source = {name: eval_sums(chosen, eval_step, *args) for name, chosen in sets.items()}
  total = None
  for sums in per_source.values():
    total = _add(total, sums)
  return total, ({} if "" in per_source else per_source)


def _teacher_of(config, mesh):
  """(source, teacher state) of eval_only's fidelity: a live teacher or ensemble; a cache covers no eval batch."""
  if not config.use_kd:
    return None, None
  if config.kd_offline_data_dir:
    raise ConfigError(
      "kd_offline_data_dir: a teacher cache covers training batches only; eval_only's fidelity needs a live "
      "teacher (kd_teacher_parameters_path or kd_teachers)"
    )
  return build_teacher(config, mesh, None)


def evaluate_checkpoint(config) -> dict[str, float]:
  """eval_only: the model in load_parameters_path on the eval split (and its fidelity to the teacher, with
  use_kd); prints and returns its record."""
  mesh = sharding.create_mesh(config)
  corpus = build_corpus(config)
  layout = make_layout(config, mesh, None)  # abstract: no optimizer state is allocated
  params = load_params(config.load_parameters_path, layout.abstract_state["params"], layout.param_shardings)
  source, teacher = _teacher_of(config, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  loss_fn = make_loss_fn(config, layout.graphdef, source, None)
  teacher_shardings = source.param_shardings if source is not None else None
  step_fn = jax.jit(
    lambda trainables, teacher, batch: loss_fn(trainables, batch, 0, teacher)[1],
    in_shardings=({"params": layout.param_shardings}, teacher_shardings, batch_sharding),
  )
  sets = build_eval_sets(config, corpus)
  with jax.set_mesh(mesh):
    step = lambda t, tt, b, _: step_fn(t, tt, b)
    sums, per_source = eval_pass(sets, step, {"params": params}, teacher, batch_sharding, 0)
  record = eval_record(sums)
  batches = sum(len(chosen.batches) for chosen in sets.values())
  if jax.process_index() == 0:
    print(
      f"eval_only {config.load_parameters_path}: loss {record['loss']:.6f} | perplexity {record['perplexity']:.4f}"
      f"{fidelity_text(record)} ({int(sums['tokens'])} tokens in {batches} batches{eval_set.coverage(sets)})",
      flush=True,
    )
  for name, source_sums in per_source.items():
    source_record = eval_record(source_sums)
    record.update({f"{name}/{k}": v for k, v in source_record.items()})
    if jax.process_index() == 0:
      print(f"  {name}: loss {source_record['loss']:.6f}{fidelity_text(source_record)}", flush=True)
  return record
