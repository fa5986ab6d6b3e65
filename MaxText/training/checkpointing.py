"""Orbax checkpoints of a run: `params` (the student's decoder), `kd_head` (the feature-KD projection,
when the run has one), `train_state` (step + optimizer) and `data_iter` (the input iterator).

Keeping the decoder parameters as an item of their own lets `load_parameters_path`, the KD teacher
and the Hugging Face export read them alone, with no knowledge of distillation or the optimizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys

import grain
import jax
import orbax.checkpoint as ocp

from MaxText.config import storage
from MaxText.config.saved_files import (  # noqa: F401 - the names re-exported for the training stack
  DATA_ITER,
  FULL_STATE_ITEMS,
  KD_HEAD,
  PARAMS,
  RUN_FILES,
  TRAIN_STATE,
  run_dir,
)
from MaxText.config.teachers import as_plain
from MaxText.model.params_io import CheckpointError, abstract_with_shardings, first_line


def checkpoint_dir(config) -> str:
  return storage.join(storage.absolute(run_dir(config)), "checkpoints")


def create_manager(config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=config.max_to_keep, create=True, enable_async_checkpointing=config.async_checkpointing
  )
  return ocp.CheckpointManager(checkpoint_dir(config), options=options, item_handlers=_item_handlers())


def _item_handlers() -> dict:
  return {
    PARAMS: ocp.StandardCheckpointHandler(),
    KD_HEAD: ocp.StandardCheckpointHandler(),
    TRAIN_STATE: ocp.StandardCheckpointHandler(),
    DATA_ITER: grain.checkpoint.CheckpointHandler(),
  }


def _items(state: dict, data_iterator, saving: bool) -> ocp.args.Composite:
  """The checkpoint items of a state (arrays to save, or abstract arrays to restore into)."""
  array_arg = ocp.args.StandardSave if saving else ocp.args.StandardRestore
  items = {
    PARAMS: array_arg(state["params"]),
    TRAIN_STATE: array_arg({"step": state["step"], "opt_state": state["opt_state"]}),
  }
  if KD_HEAD in state:
    items[KD_HEAD] = array_arg(state[KD_HEAD])
  if data_iterator is not None:
    iterator_arg = grain.checkpoint.CheckpointSave if saving else grain.checkpoint.CheckpointRestore
    items[DATA_ITER] = iterator_arg(data_iterator)
  return ocp.args.Composite(**items)


# Fault injection for the kill-and-resume tests: SIGKILL the process right after step N's save started
# (with async checkpointing, while that save is still being written).
KILL_AFTER_SAVE = "MAXTEXT_FAULT_KILL_AFTER_SAVE"


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_iterator) -> None:
  with _write_errors_as_one_line(manager, step):
    manager.save(step, args=_items(state, data_iterator, saving=True), force=True)
  if os.environ.get(KILL_AFTER_SAVE) == str(step):
    os.kill(os.getpid(), signal.SIGKILL)


def wait_until_finished(manager: ocp.CheckpointManager) -> None:
  """Waits for a background save; a failed write (disk full, folder gone read-only) ends as one line."""
  with _write_errors_as_one_line(manager, None):
    manager.wait_until_finished()


def _os_error_in(error: BaseException) -> OSError | None:
  """The OSError behind an error (Orbax re-raises a background write's failure wrapped), if any."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


@contextlib.contextmanager
def _write_errors_as_one_line(manager: ocp.CheckpointManager, step: int | None):
  try:
    yield
  except Exception as e:
    os_error = _os_error_in(e)
    if os_error is None:
      raise
    raise CheckpointError(
      f"base_output_directory: {f'checkpoint step {step}' if step else 'a checkpoint'} cannot be written in "
      f"{manager.directory} ({os_error}); "
      "the run stopped, the checkpoints already on disk are kept"
    ) from None


def _restore(manager: ocp.CheckpointManager, step: int, layout, data_iterator) -> dict:
  abstract = abstract_with_shardings(layout.abstract_state, layout.state_shardings)
  restored = manager.restore(step, args=_items(abstract, data_iterator, saving=False))
  train_state = restored[TRAIN_STATE]
  state = {"step": train_state["step"], "params": restored[PARAMS], "opt_state": train_state["opt_state"]}
  if KD_HEAD in abstract:
    state[KD_HEAD] = restored[KD_HEAD]
  return state


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Renames an unrestorable step folder (kept for inspection, never deleted) so the run can save that step again."""
  folder = storage.join(str(manager.directory), str(step))
  aside = storage.join(str(manager.directory), f"unrestorable-{step}")
  if jax.process_index() == 0 and storage.isdir(folder):
    storage.rename(folder, aside)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
  manager.reload()
  return aside


def restore_latest(manager: ocp.CheckpointManager, layout, data_iterator):
  """(state, step) from the newest checkpoint that restores, with the data iterator restored in place;
  None when there is none. A step that fails to restore (truncated by a crash or a full disk) is set
  aside and the one before it is used, and the run says so."""
  failed = {}
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = _restore(manager, step, layout, data_iterator)
    except Exception as e:  # noqa: BLE001 - anything wrong with the files of a step: try an older one
      failed[step] = first_line(e)
      continue
    # An older step of the same run restores, so the newer ones are damaged (not of another structure):
    # they are set aside, and the run says so.
    for bad, reason in failed.items():
      print(f"checkpoint step {bad} cannot be restored ({reason}); kept as {_set_aside(manager, bad)}", file=sys.stderr)
    if failed:
      print(f"resuming from step {step}, the newest checkpoint that restores", file=sys.stderr)
    return state, step
  if failed:
    newest = max(failed)
    raise CheckpointError(
      f"no checkpoint in {manager.directory} can be restored (step {newest}: {failed[newest]}); "
      "was the run's config changed?"
    )
  return None


def restore_full_state(path: str, layout, data_iterator) -> tuple[dict, int]:
  """(state, step) from another run's step folder (load_full_state_path), the data iterator restored in
  place when the folder holds its position; a folder that does not restore into this run is one line."""
  folder, step = storage.dirname(path), int(storage.basename(path))
  has_position = storage.isdir(storage.join(path, DATA_ITER))
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(folder, options=options, item_handlers=_item_handlers()) as manager:
    try:
      state = _restore(manager, step, layout, data_iterator if has_position else None)
    except Exception as e:  # noqa: BLE001 - damaged files, another model, another optimizer: one line
      raise CheckpointError(
        f"load_full_state_path: {path!r} cannot be restored into this run ({first_line(e)}); the model, "
        "optimizer and feature-KD keys must be those of the run that saved it"
      ) from None
  return state, step


def save_run_config(config) -> None:
  """The run's full config as JSON in its folder (read when the run later serves as a teacher or is exported)."""
  if jax.process_index() != 0:
    return
  storage.makedirs(run_dir(config))
  with storage.open_file(storage.join(run_dir(config), "config.json"), "w", encoding="utf-8") as f:
    json.dump({k: as_plain(v) for k, v in dataclasses.asdict(config).items()}, f, indent=1)
