"""Orbax checkpoints of a run: `params` (the student's decoder), `kd_head` (the feature-KD projection,
when the run has one), `train_state` (step + optimizer) and `data_iter` (the input iterator).

Keeping the decoder parameters as an item of their own lets `load_parameters_path`, the KD teacher
and the Hugging Face export read them alone, with no knowledge of distillation or the optimizer.
"""

from __future__ import annotations

import dataclasses
import json
import os

import grain
import jax
import orbax.checkpoint as ocp

from MaxText.model.params_io import PARAMS, CheckpointError, abstract_with_shardings

KD_HEAD, TRAIN_STATE, DATA_ITER = "kd_head", "train_state", "data_iter"


def run_dir(config) -> str:
  return os.path.join(config.base_output_directory, config.run_name or "default_run")


def checkpoint_dir(config) -> str:
  return os.path.join(os.path.abspath(run_dir(config)), "checkpoints")


def create_manager(config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=config.max_to_keep, create=True, enable_async_checkpointing=config.async_checkpointing
  )
  return ocp.CheckpointManager(
    checkpoint_dir(config),
    options=options,
    item_handlers={
      PARAMS: ocp.StandardCheckpointHandler(),
      KD_HEAD: ocp.StandardCheckpointHandler(),
      TRAIN_STATE: ocp.StandardCheckpointHandler(),
      DATA_ITER: grain.checkpoint.CheckpointHandler(),
    },
  )


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_iterator) -> None:
  items = {
    PARAMS: ocp.args.StandardSave(state["params"]),
    TRAIN_STATE: ocp.args.StandardSave({"step": state["step"], "opt_state": state["opt_state"]}),
  }
  if KD_HEAD in state:
    items[KD_HEAD] = ocp.args.StandardSave(state[KD_HEAD])
  if data_iterator is not None:
    items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore_latest(manager: ocp.CheckpointManager, layout, data_iterator):
  """(state, step) from the newest checkpoint, with the data iterator restored in place; None if none."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = abstract_with_shardings(layout.abstract_state, layout.state_shardings)
  items = {
    PARAMS: ocp.args.StandardRestore(abstract["params"]),
    TRAIN_STATE: ocp.args.StandardRestore({"step": abstract["step"], "opt_state": abstract["opt_state"]}),
  }
  if KD_HEAD in abstract:
    items[KD_HEAD] = ocp.args.StandardRestore(abstract[KD_HEAD])
  if data_iterator is not None:
    items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iterator)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise CheckpointError(f"checkpoint {manager.directory}/{step} cannot be restored: {e}") from None
  train_state = restored[TRAIN_STATE]
  state = {"step": train_state["step"], "params": restored[PARAMS], "opt_state": train_state["opt_state"]}
  if KD_HEAD in abstract:
    state[KD_HEAD] = restored[KD_HEAD]
  return state, step


def save_run_config(config) -> None:
  """The run's full config as JSON in its folder (read when the run later serves as a teacher or is exported)."""
  if jax.process_index() != 0:
    return
  os.makedirs(run_dir(config), exist_ok=True)
  with open(os.path.join(run_dir(config), "config.json"), "w", encoding="utf-8") as f:
    json.dump(dataclasses.asdict(config), f, indent=1)
