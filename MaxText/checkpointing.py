"""Orbax checkpoints: a run's checkpoints hold `params`, `train_state` (step + optimizer) and `data_iter`.

Keeping the parameters as an item of their own lets `load_parameters_path` and the KD teacher read
parameters alone (no optimizer state is read or kept for them).
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp

PARAMS, TRAIN_STATE, DATA_ITER = "params", "train_state", "data_iter"


class CheckpointError(RuntimeError):
  pass


def checkpoint_dir(config) -> str:
  return os.path.join(os.path.abspath(run_dir(config)), "checkpoints")


def run_dir(config) -> str:
  return os.path.join(config.base_output_directory, config.run_name or "default_run")


def create_manager(config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=config.max_to_keep, create=True, enable_async_checkpointing=config.async_checkpointing
  )
  return ocp.CheckpointManager(
    checkpoint_dir(config),
    options=options,
    item_handlers={
      PARAMS: ocp.StandardCheckpointHandler(),
      TRAIN_STATE: ocp.StandardCheckpointHandler(),
      DATA_ITER: grain.checkpoint.CheckpointHandler(),
    },
  )


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_iterator) -> None:
  items = {
    PARAMS: ocp.args.StandardSave(state["params"]),
    TRAIN_STATE: ocp.args.StandardSave({"step": state["step"], "opt_state": state["opt_state"]}),
  }
  if data_iterator is not None:
    items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_latest(manager: ocp.CheckpointManager, layout, data_iterator):
  """(state, step) from the newest checkpoint, with the data iterator restored in place; None if none."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = _abstract(layout.abstract_state, layout.state_shardings)
  items = {
    PARAMS: ocp.args.StandardRestore(abstract["params"]),
    TRAIN_STATE: ocp.args.StandardRestore({"step": abstract["step"], "opt_state": abstract["opt_state"]}),
  }
  if data_iterator is not None:
    items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iterator)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise CheckpointError(f"checkpoint {manager.directory}/{step} cannot be restored: {e}") from None
  train_state = restored[TRAIN_STATE]
  state = {"step": train_state["step"], "params": restored[PARAMS], "opt_state": train_state["opt_state"]}
  return state, step


def _params_dir(path: str) -> str:
  """Accepts a step folder of a run (holding `params/`) or a parameters-only folder itself."""
  path = os.path.abspath(path)
  candidate = os.path.join(path, PARAMS)
  return candidate if os.path.isdir(candidate) else path


def load_params(path: str, abstract_params, param_shardings):
  """Parameters only, read-only, into the given shardings (no optimizer state is touched)."""
  if not os.path.isdir(path):
    raise CheckpointError(f"parameters checkpoint {path!r} does not exist or is not a folder")
  target = _abstract(abstract_params, param_shardings)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(_params_dir(path), target)
  except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"parameters checkpoint {path!r} cannot be read: {str(e).splitlines()[0]}") from None


def save_params(path: str, params) -> None:
  """A parameters-only checkpoint (what converters write and `load_parameters_path` reads)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(os.path.abspath(path), PARAMS), params)


def latest_step_dir(path: str) -> str:
  """A run folder or its `checkpoints/` folder -> its newest step folder; any other folder as it is."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = [int(name) for name in os.listdir(path) if name.isdigit()] if os.path.isdir(path) else []
  return os.path.join(path, str(max(steps))) if steps else path


def read_params_to_host(path: str) -> dict:
  """Every parameter of a checkpoint as saved (no config needed), on the first local device."""
  if not os.path.isdir(path):
    raise CheckpointError(f"parameters checkpoint {path!r} does not exist or is not a folder")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      saved = checkpointer.metadata(_params_dir(path)).item_metadata.tree
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
      return checkpointer.restore(_params_dir(path), target)
  except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"parameters checkpoint {path!r} cannot be read: {str(e).splitlines()[0]}") from None
