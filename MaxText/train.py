"""Entry point: `python MaxText/train.py base.yml key=value ...` (`--help` lists every key).

config -> mesh -> state (+ teacher) -> input pipeline -> jitted train_step -> metrics/checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make `import MaxText` work from a checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from MaxText import (  # noqa: E402
  checkpointing,
  distillation,
  input_pipeline,
  offline_cache,
  offline_distillation,
  pyconfig,
  sharding,
)
from MaxText import metrics as metrics_lib  # noqa: E402
from MaxText import model as model_lib  # noqa: E402
from MaxText.tokenizer import build_tokenizer, check_fits_model  # noqa: E402
from MaxText.train_state import init_state, make_layout  # noqa: E402
from MaxText.train_step import make_eval_step, make_train_step, student_loss_sums  # noqa: E402


def maybe_initialize_distributed(config) -> None:
  if not config.jax_distributed_initialize:
    return
  kwargs = {}
  if config.coordinator_address:
    kwargs = {
      "coordinator_address": config.coordinator_address,
      "num_processes": config.num_processes or None,
      "process_id": config.process_id if config.process_id >= 0 else None,
    }
  jax.distributed.initialize(**kwargs)


def global_batch_size(config) -> int:
  """Global batch from per_device_batch_size; checked against devices, processes and accumulation."""
  exact = config.per_device_batch_size * jax.device_count()
  size = int(round(exact))
  if abs(exact - size) > 1e-9 or size < 1:
    raise ValueError(
      f"per_device_batch_size: {config.per_device_batch_size} x {jax.device_count()} devices "
      f"is not a whole number of sequences"
    )
  for divisor, key in (
    (jax.process_count(), "process count"),
    (config.gradient_accumulation_steps, "gradient_accumulation_steps"),
  ):
    if size % divisor:
      raise ValueError(f"per_device_batch_size: global batch {size} is not divisible by the {key} ({divisor})")
  return size


def build_corpus(config):
  if config.dataset_type == "synthetic":
    return None
  tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_path)
  check_fits_model(tokenizer, config.vocab_size)
  return input_pipeline.TokenizedCorpus(config, tokenizer)


def to_global(batch: dict, batch_sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v)) for k, v in batch.items()}


def save_run_config(config) -> None:
  """The run's full config as JSON beside its checkpoints (read when the run later serves as a teacher)."""
  if jax.process_index() != 0:
    return
  os.makedirs(checkpointing.run_dir(config), exist_ok=True)
  with open(os.path.join(checkpointing.run_dir(config), "config.json"), "w", encoding="utf-8") as f:
    json.dump(dataclasses.asdict(config), f, indent=1)


def print_summary(config, mesh, params, teacher_params, start_step: int) -> None:
  if jax.process_index() != 0:
    return
  print(
    f"model: {model_lib.parameter_count(params):,} parameters | "
    f"{metrics_lib.flops_per_token(config) / 1e9:.4f} GFLOPs/token (training)"
  )
  print(
    f"mesh: {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
    f"{jax.process_count()} process(es)"
  )
  print(f"keys that differ from base.yml: {pyconfig.non_default_keys(config)}")
  if config.use_kd and config.kd_offline_data_dir:
    print(
      f"distillation: OFFLINE from the teacher cache {config.kd_offline_data_dir} "
      f"(normalization {config.kd_offline_normalization}; no teacher model is loaded)"
    )
  elif config.use_kd and not config.kd_teacher_parameters_path:
    print(
      "distillation: SELF-DISTILLATION - kd_teacher_parameters_path is empty, so the student's own initial "
      "parameters, frozen, act as the teacher"
    )
  elif config.use_kd:
    print(
      f"distillation: teacher {config.kd_teacher_parameters_path} "
      f"({model_lib.parameter_count(teacher_params):,} parameters, frozen)"
    )
  if start_step:
    print(f"resumed from checkpoint at step {start_step}")


class Trainer:
  """Holds the compiled steps and the run's state; `run()` is the loop."""

  def __init__(self, config):
    self.config = config
    self.mesh = sharding.create_mesh(config)
    self.batch_size = global_batch_size(config)
    self.corpus = build_corpus(config)
    self.layout = make_layout(config, self.mesh)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    local_batch = self.batch_size // jax.process_count()
    offline = config.use_kd and bool(config.kd_offline_data_dir)
    if offline:  # the cache holds the sequences and the teacher's top-k
      self.train_iter = offline_cache.make_iterator(config, local_batch, jax.process_index(), jax.process_count())
    else:
      self.train_iter = input_pipeline.make_iterator(config, self.corpus, "train", local_batch)
    self.manager = checkpointing.create_manager(config) if config.enable_checkpointing else None
    self.state, self.start_step = self._initial_state()
    layout = self.layout
    loss_sums, step_metrics, teacher_shardings = student_loss_sums, None, None
    self.teacher_params = self.eval_teacher_params = None
    eval_loss_sums = student_loss_sums
    if offline:
      temperatures = offline_cache.read_manifest(config.kd_offline_data_dir)["temperatures"]
      loss_sums = offline_distillation.make_offline_kd_loss(config, temperatures)
      step_metrics = distillation.step_metrics(config)
      self.teacher_params = {}  # no teacher tensors; a non-None value selects the KD loss signature
    elif config.use_kd:
      teacher, self.teacher_params = distillation.load_teacher(config, self.mesh, layout)
      loss_sums, step_metrics = distillation.make_kd_loss(config, teacher), distillation.step_metrics(config)
      teacher_shardings = teacher.param_shardings
      eval_loss_sums, self.eval_teacher_params = loss_sums, self.teacher_params
    self.train_step = jax.jit(
      make_train_step(config, layout.graphdef, layout.tx, loss_sums, step_metrics),
      in_shardings=(layout.state_shardings, teacher_shardings, self.batch_sharding),
      out_shardings=(layout.state_shardings, None),
      donate_argnums=(0,),
    )
    self.eval_step = jax.jit(
      make_eval_step(config, layout.graphdef, eval_loss_sums),  # offline: the student's held-out CE only
      in_shardings=(
        layout.param_shardings,
        teacher_shardings if self.eval_teacher_params else None,
        self.batch_sharding,
        None,
      ),
    )

  def _initial_state(self):
    restored = None
    if self.manager is not None:
      restored = checkpointing.restore_latest(self.manager, self.layout, self.train_iter)
    if restored is not None:
      return restored
    params = None
    if self.config.load_parameters_path:
      params = checkpointing.load_params(
        self.config.load_parameters_path, self.layout.abstract_state["params"], self.layout.param_shardings
      )
    return init_state(self.config, self.layout, params), 0

  def evaluate(self, step: int, logger) -> dict:
    started = time.perf_counter()
    eval_iter = input_pipeline.make_iterator(self.config, self.corpus, "eval", self.batch_size // jax.process_count())
    total = None
    for _ in range(self.config.eval_steps):
      batch = to_global(next(eval_iter), self.batch_sharding)
      sums = self.eval_step(self.state["params"], self.eval_teacher_params, batch, self.state["step"])
      total = metrics_lib.accumulate_sums(total, sums)
    record = logger.write_eval(step, total)
    logger.window_start += time.perf_counter() - started  # eval time is not training throughput
    return record

  def run(self) -> None:
    config = self.config
    logger = metrics_lib.MetricLogger(config, checkpointing.run_dir(config), jax.process_index() == 0, self.start_step)
    save_run_config(config)
    print_summary(config, self.mesh, self.state["params"], self.teacher_params, self.start_step)
    pending = None  # metrics are read one step late so the host never stalls the device
    try:
      with jax.set_mesh(self.mesh):
        for step in range(self.start_step + 1, config.steps + 1):
          batch = to_global(next(self.train_iter), self.batch_sharding)
          self.state, step_metrics = self.train_step(self.state, self.teacher_params, batch)
          if pending is not None:
            logger.add_step(*pending)
          pending = (step, step_metrics)
          last = step == config.steps
          must_save = self.manager is not None and (step % config.checkpoint_period == 0 or last)
          if step % config.log_period == 0 or last or must_save:
            logger.add_step(*pending)  # a checkpoint is written only after its step's loss is known finite
            pending = None
            if step % config.log_period == 0 or last:
              logger.write(step)
          if must_save:
            checkpointing.save(self.manager, step, self.state, self.train_iter)
          if config.eval_interval and (step % config.eval_interval == 0 or last):
            self.evaluate(step, logger)
    finally:
      if self.manager is not None:
        self.manager.wait_until_finished()
      logger.close()


def main(argv: list[str]) -> int:
  if "--help" in argv or "-h" in argv:
    print("usage: python MaxText/train.py base.yml [key=value ...]\n")
    print(pyconfig.help_text())
    return 0
  try:
    config = pyconfig.initialize(argv[1:])
  except pyconfig.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  maybe_initialize_distributed(config)
  if config.jax_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.jax_cache_dir)
  try:
    Trainer(config).run()
  except (FileNotFoundError, KeyError, ValueError, checkpointing.CheckpointError, metrics_lib.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
