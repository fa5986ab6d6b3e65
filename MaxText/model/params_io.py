"""Parameters-only checkpoints: what converters write, and what `load_parameters_path` and the KD teacher read.

A run's checkpoint step folder holds the parameters as an Orbax item of their own (`params/`), so the
same reader takes a step folder of a run or a parameters-only folder; no optimizer state is touched.
"""

from __future__ import annotations

import hashlib
import json
import logging

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from MaxText.config import storage
from MaxText.config.errors import UserError
from MaxText.config.saved_files import MODEL_CONFIG_FILE, PARAMS, saved_model_keys  # noqa: F401 - re-exported

storage.fresh_listings()  # before Orbax / Grain open any URL themselves


class CheckpointError(UserError, RuntimeError):
  """A checkpoint folder that is missing, unreadable or of another model."""


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines() or [type(error).__name__]
  return lines[0].split(". See full")[0][:300]


def _params_dir(path: str) -> str:
  """Accepts a step folder of a run (holding `params/`) or a parameters-only folder itself."""
  path = storage.absolute(path)
  candidate = storage.join(path, PARAMS)
  return candidate if storage.isdir(candidate) else path


def load_params(path: str, abstract_params, param_shardings):
  """Parameters only, read-only, into the given shardings (no optimizer state is touched)."""
  if not storage.isdir(path):
    raise CheckpointError(f"parameters checkpoint {path!r} does not exist or is not a folder")
  target = abstract_with_shardings(abstract_params, param_shardings)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(_params_dir(path), target)
  except Exception as e:  # noqa: BLE001 - whatever Orbax/TensorStore raise for damaged or foreign files
    raise CheckpointError(f"parameters checkpoint {path!r} cannot be read: {first_line(e)}") from None


def save_params(path: str, params) -> None:
  """A parameters-only checkpoint (what converters write and `load_parameters_path` reads)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(storage.join(storage.absolute(path), PARAMS), params)


def latest_step_dir(path: str) -> str:
  """A run folder or its `checkpoints/` folder -> its newest step folder; any other folder as it is."""
  path = storage.absolute(path)
  if storage.isdir(storage.join(path, "checkpoints")):
    path = storage.join(path, "checkpoints")
  steps = [int(name) for name in storage.listdir(path) if name.isdigit()] if storage.isdir(path) else []
  return storage.join(path, str(max(steps))) if steps else path


def read_params_to_host(path: str) -> dict:
  """Every parameter of a checkpoint as saved (no config needed), on the first local device."""
  if not storage.isdir(path):
    raise CheckpointError(f"parameters checkpoint {path!r} does not exist or is not a folder")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      absl_logger = logging.getLogger("absl")
      level = absl_logger.level
      absl_logger.setLevel(logging.ERROR)  # Orbax warns on a damaged folder; the error below says it in one line
      try:
        metadata = checkpointer.metadata(_params_dir(path)).item_metadata
      finally:
        absl_logger.setLevel(level)
      if metadata is None:
        raise CheckpointError(f"parameters checkpoint {path!r} cannot be read: no readable metadata (truncated?)")
      saved = metadata.tree
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
      return checkpointer.restore(_params_dir(path), target)
  except CheckpointError:
    raise
  except Exception as e:  # noqa: BLE001 - whatever Orbax/TensorStore raise for damaged or foreign files
    raise CheckpointError(f"parameters checkpoint {path!r} cannot be read: {first_line(e)}") from None


def params_fingerprint(params) -> str:
  """sha256 over each tensor's path, shape, dtype, sum and sum of squares (computed on device, 6 digits)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  stats = jax.jit(lambda p: [(jnp.sum(x.astype(jnp.float32)), jnp.sum(jnp.square(x.astype(jnp.float32)))) for x in p])(
    [x for _, x in leaves]
  )
  text = json.dumps(
    [
      [jax.tree_util.keystr(path), list(x.shape), str(x.dtype), f"{float(s):.6e}", f"{float(q):.6e}"]
      for (path, x), (s, q) in zip(leaves, stats, strict=True)
    ]
  )
  return hashlib.sha256(text.encode()).hexdigest()
