"""`eval_tasks`: a training run scores lm-eval tasks at its eval steps, on its current parameters, and logs
each task's metrics as eval/tasks/<task>/<metric>. The tasks are lm-eval's (names, or YAMLs under
`eval_tasks_path`); rows are the run's global batch and windows its max_target_length. One process only:
on several hosts, score a saved checkpoint with `python -m MaxText.run_lm_eval` instead."""

from __future__ import annotations

import logging

import jax

from MaxText.config.errors import ConfigError
from MaxText.data.tokenizer import build_tokenizer


def task_names(config) -> list[str]:
  return [name.strip() for name in config.eval_tasks.split(",") if name.strip()]


class TaskScorer:
  """Scores the run's tasks on given parameters; the adapter and the task data are built at the first call."""

  def __init__(self, config, mesh, graphdef, rows: int):
    if jax.process_count() > 1:
      raise ConfigError("eval_tasks: scored in one process only; score a saved checkpoint with MaxText.run_lm_eval")
    self.config, self.mesh, self.graphdef, self.rows = config, mesh, graphdef, rows
    self.lm = self.manager = None

  def __call__(self, params) -> dict[str, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from MaxText.lm_harness.adapter import MaxTextLM

    config = self.config
    if self.lm is None:
      tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_path)
      self.lm = MaxTextLM.from_loaded(
        config, tokenizer, self.mesh, self.graphdef, params, batch_size=self.rows, max_length=config.max_target_length
      )
      self.manager = TaskManager(include_path=config.eval_tasks_path or None, verbosity="WARNING")
      logging.getLogger("lm_eval").setLevel(logging.WARNING)
    self.lm.use_params(params)
    results = lm_eval.simple_evaluate(
      model=self.lm,
      tasks=task_names(config),
      task_manager=self.manager,
      limit=config.eval_tasks_limit or None,
      verbosity="WARNING",
    )
    return flat_metrics(results["results"])


def flat_metrics(results: dict) -> dict[str, float]:
  """{"tasks/<task>/<metric>": value} of lm-eval's results (standard errors and counts left out)."""
  flat = {}
  for task, metrics in results.items():
    for key, value in metrics.items():
      metric = key.split(",")[0]
      if isinstance(value, int | float) and not metric.endswith("_stderr") and metric != "sample_len":
        flat[f"tasks/{task}/{metric}"] = float(value)
  return flat
