"""The training loop: the run's state, its teacher (if any), the compiled steps, metrics and checkpoints.

config -> pre-flight files -> mesh -> state layout -> teacher source -> input -> jitted train_step ->
metrics/checkpoints. A plain run, an online-KD run and an offline-KD run differ only in the teacher
source `distill.teacher.build_teacher` returns and, for the cache, where the batches come from.
"""

from __future__ import annotations

import dataclasses
import time

import jax

from MaxText.config.loader import non_default_keys
from MaxText.config.teachers import normalized_weights
from MaxText.config.views import feature_alignment
from MaxText.data import input_pipeline, teacher_cache
from MaxText.data.eval_set import coverage
from MaxText.data.tokenizer import build_tokenizer
from MaxText.distill import on_policy
from MaxText.distill.objective import make_loss_fn
from MaxText.distill.teacher import build_teacher
from MaxText.lm_harness.in_training import TaskScorer
from MaxText.losses.divergence_family import Divergence
from MaxText.model import decoder, int8_weights
from MaxText.model.params_io import load_params
from MaxText.parallel import sharding
from MaxText.training import checkpointing, preflight, remat
from MaxText.training import metrics as metrics_lib
from MaxText.training.evaluation import build_eval_sets, eval_pass
from MaxText.training.profiler import StepProfiler
from MaxText.training.runtime import build_corpus, global_batch_size, to_global
from MaxText.training.saved_steps import SavedSteps
from MaxText.training.state import init_state, make_layout, trainables
from MaxText.training.step import jit_train_step, make_eval_step


def describe_teacher(config, teacher_params) -> str:
  if config.kd_offline_data_dir:
    return (
      f"OFFLINE from the teacher cache {config.kd_offline_data_dir} "
      f"(normalization {config.kd_offline_normalization}; no teacher model is loaded)"
    )
  if config.kd_teachers:
    weights = normalized_weights(config.kd_teachers)
    members = ", ".join(
      f"{spec.name} {spec.parameters_path} (weight {w:.3g}, {decoder.parameter_count(p):,} parameters)"
      for spec, w, p in zip(config.kd_teachers, weights, teacher_params, strict=True)
    )
    return f"ensemble of {len(weights)} frozen teachers, kd_ensemble={config.kd_ensemble}: {members}"
  if not config.kd_teacher_parameters_path:
    return (
      "SELF-DISTILLATION - kd_teacher_parameters_path is empty, so the student's own initial "
      "parameters, frozen, act as the teacher"
    )
  count, held = decoder.parameter_count(teacher_params), int8_weights.nbytes(teacher_params) / 2**20
  int8 = ", int8 matmul weights" if config.kd_teacher_dtype == "int8" else ""
  return f"teacher {config.kd_teacher_parameters_path} ({count:,} parameters, {held:,.1f} MiB{int8}, frozen)"


def print_summary(config, mesh, params, teacher_params, start_step: int) -> None:
  if jax.process_index() != 0:
    return
  flops = metrics_lib.flops_per_token(config) / 1e9
  print(f"model: {decoder.parameter_count(params):,} parameters | {flops:.4f} GFLOPs/token (training)")
  print(
    f"mesh: {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
    f"{jax.process_count()} process(es)"
  )
  print(f"keys that differ from base.yml: {non_default_keys(config)}")
  if config.use_kd:
    print(f"distillation: {describe_teacher(config, teacher_params)}")
  if start_step:
    print(f"resumed from checkpoint at step {start_step}")


class Trainer:
  """Holds the compiled steps and the run's state; `run()` is the loop."""

  def __init__(self, config, files: preflight.RunFiles | None = None):
    self.config = config
    files = files if files is not None else preflight.run(config)
    self.mesh = sharding.create_mesh(config)
    self.batch_size = global_batch_size(config)
    self.corpus = build_corpus(config)
    alignment = feature_alignment(config)
    layout = make_layout(config, self.mesh, alignment)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.source, self.teacher = build_teacher(config, self.mesh, files.cache)
    config, self.remat = remat.resolve(config, layout, self.teacher)  # `auto`: the fastest policy that fits
    if self.remat is not None:
      self.config = config
      layout = make_layout(config, self.mesh, alignment)
    self.layout = layout
    self.train_iter = self._train_iterator(files.cache)
    self.manager = checkpointing.create_manager(config) if config.enable_checkpointing else None
    self.state, self.start_step = self._initial_state()
    on_disk = list(self.manager.all_steps()) if self.manager is not None else []
    self.saved = SavedSteps(checkpointing.checkpoint_dir(config), self.start_step, self.state["params"], on_disk)
    self.train_step = jit_train_step(config, layout, self.source, self.batch_sharding)
    self.on_policy = self._on_policy_steps()
    # eval batches come from the pipeline: a cached teacher does not cover them, so that eval is the student's CE
    evaluates_teacher = self.source is not None and self.source.in_eval
    self.eval_teacher = self.teacher if evaluates_teacher else None
    teacher_shardings = self.source.param_shardings if evaluates_teacher else None
    eval_source, eval_alignment = (self.source, alignment) if evaluates_teacher else (None, None)
    eval_loss_fn = make_loss_fn(config, layout.graphdef, eval_source, eval_alignment)
    trainable_shardings = trainables(layout.state_shardings)
    self.eval_sets = None
    self.task_scorer = TaskScorer(config, self.mesh, layout.graphdef, self.batch_size) if config.eval_tasks else None
    self.eval_step = jax.jit(
      make_eval_step(eval_loss_fn),
      in_shardings=(trainable_shardings, teacher_shardings, self.batch_sharding, None),
    )

  def _on_policy_steps(self):
    """(jitted sampler, jitted step) of on-policy KD (distill/on_policy.py), or None when it is off."""
    config = self.config
    if not config.kd_on_policy_fraction:
      return None
    step_config = on_policy.on_policy_config(config)
    source = dataclasses.replace(self.source, kind=Divergence.from_config(step_config))
    step = jit_train_step(step_config, self.layout, source, self.batch_sharding)
    eos = build_tokenizer(config.tokenizer_type, config.tokenizer_path).eos_id
    graphdef, temperature, new_tokens = (
      self.layout.graphdef,
      config.kd_on_policy_temperature,
      config.kd_on_policy_max_new_tokens,
    )

    def sample(params, batch, key):
      model = decoder.bind(graphdef, params)
      return on_policy.sampled_batch(model, batch, key, temperature, new_tokens, () if eos is None else (eos,))

    shardings = (self.layout.param_shardings, self.batch_sharding, None)
    return jax.jit(sample, in_shardings=shardings, out_shardings=self.batch_sharding), step

  def _train_one(self, step: int, batch: dict) -> dict:
    """One update; on an on-policy step the student first rewrites the batch with its own samples."""
    if self.on_policy is None or not on_policy.is_on_policy_step(self.config, step):
      self.state, device_metrics = self.train_step(self.state, self.teacher, batch)
      return device_metrics if self.on_policy is None else {**device_metrics, "kd/on_policy": 0.0}
    sampler, on_policy_step = self.on_policy
    started = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(self.config.seed), step)
    batch = jax.block_until_ready(sampler(self.state["params"], batch, key))
    generation_s = time.perf_counter() - started
    self.state, device_metrics = on_policy_step(self.state, self.teacher, batch)
    return {**device_metrics, "kd/on_policy": 1.0, "kd/generation_s": generation_s}

  def _train_iterator(self, cache: teacher_cache.CacheView | None):
    local_batch = self.batch_size // jax.process_count()
    if cache is not None:  # the cache holds the sequences and the teacher's top-k
      seed, index, count = self.config.data_shuffle_seed, jax.process_index(), jax.process_count()
      if self.config.kd_offline_verify:
        teacher_cache.verify(cache, index, count)
      return teacher_cache.make_iterator(cache, seed, local_batch, index, count, self.config.grain_worker_count)
    return input_pipeline.make_iterator(self.config, self.corpus, "train", local_batch)

  def _initial_state(self):
    restored = None
    if self.manager is not None:
      restored = checkpointing.restore_latest(self.manager, self.layout, self.train_iter)
    if restored is not None:
      return restored
    if self.config.load_full_state_path:  # a new run continuing another's saved step
      return checkpointing.restore_full_state(self.config.load_full_state_path, self.layout, self.train_iter)
    params = None
    if self.config.load_parameters_path:  # the decoder only: a feature head always starts fresh
      abstract_params = self.layout.abstract_state["params"]
      params = load_params(self.config.load_parameters_path, abstract_params, self.layout.param_shardings)
    return init_state(self.config, self.layout, params), 0

  def evaluate(self, step: int, logger) -> dict:
    started = time.perf_counter()
    args = (trainables(self.state), self.eval_teacher, self.batch_sharding, self.state["step"])
    if self.eval_sets is None:  # chosen once: every pass scores the same batches
      self.eval_sets = build_eval_sets(self.config, self.corpus)
    sums, per_source = eval_pass(self.eval_sets, self.eval_step, *args)
    record = logger.write_eval(step, sums, coverage(self.eval_sets))
    for name, source_sums in per_source.items():
      record.update(logger.write_eval(step, source_sums, source=name))
    if self.task_scorer is not None:
      with jax.set_mesh(self.mesh):
        record.update(logger.write_tasks(step, self.task_scorer(self.state["params"])))
    logger.window_start += time.perf_counter() - started  # eval time is not training throughput
    return record

  def run(self) -> None:
    config = self.config
    run_dir = checkpointing.run_dir(config)
    logger = metrics_lib.MetricLogger(config, run_dir, jax.process_index() == 0, self.start_step)
    checkpointing.save_run_config(config)
    print_summary(config, self.mesh, self.state["params"], self.teacher, self.start_step)
    if self.remat is not None and jax.process_index() == 0:
      print(f"remat_policy: auto -> {self.remat.policy} ({self.remat.reason})")
    profiler = StepProfiler(config, run_dir, self.start_step)
    pending = None  # metrics are read one step late so the host never stalls the device
    try:
      with jax.set_mesh(self.mesh):
        for step in range(self.start_step + 1, config.steps + 1):
          batch = to_global(next(self.train_iter), self.batch_sharding)
          profiler.before_step(step)
          device_metrics = self._train_one(step, batch)
          profiler.after_step(step, device_metrics)
          if pending is not None:
            logger.add_step(*pending)
          pending = (step, device_metrics)
          last = step == config.steps
          must_save = self.manager is not None and (step % config.checkpoint_period == 0 or last)
          if step % config.log_period == 0 or last or must_save:
            loss = logger.add_step(*pending)  # a checkpoint is written only after its step's loss is known finite
            pending = None
            if step % config.log_period == 0 or last:
              logger.write(step)
          if must_save:
            checkpointing.save(self.manager, step, self.state, self.train_iter)
            self.saved.record(step, loss, self.state["params"])
          if config.eval_interval and (step % config.eval_interval == 0 or last):
            self.evaluate(step, logger)
    except metrics_lib.NonFiniteLossError as e:
      on_disk = list(self.manager.all_steps()) if self.manager is not None else []
      raise metrics_lib.NonFiniteLossError(f"{e} {self.saved.advice(on_disk)}") from None
    finally:
      profiler.stop()
      if self.manager is not None:
        checkpointing.wait_until_finished(self.manager)
      logger.close()
