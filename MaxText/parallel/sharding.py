"""The device mesh and the one table that maps logical tensor axes to mesh axes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from MaxText.config.checks import check_attention_platform
from MaxText.config.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class LogicalAxisRules:
  """Logical axis name -> mesh axes it is split over (empty: replicated)."""

  rules: Mapping[str, tuple[str, ...]]

  def __post_init__(self):
    for logical, mesh_axes in self.rules.items():
      unknown = [a for a in mesh_axes if a not in MESH_AXES]
      if unknown:
        raise ValueError(f"sharding rule {logical!r}: unknown mesh axes {unknown}; mesh axes are {MESH_AXES}")

  def spec(
    self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None
  ) -> PartitionSpec:
    """PartitionSpec for a tensor with these logical axes.

    With `shape` and `mesh`, a mesh axis that does not divide its dimension is dropped (the dimension
    stays replicated over it), so tiny test models shard on any mesh. A mesh axis used by two
    dimensions of one tensor is a collision and an error.
    """
    used: set[str] = set()
    parts = []
    for dim, logical in enumerate(logical_axes):
      if logical is None:
        parts.append(None)
        continue
      if logical not in self.rules:
        raise KeyError(f"no sharding rule for logical axis {logical!r}")
      mesh_axes = []
      size = 1
      for axis in self.rules[logical]:
        if axis in used:
          raise ValueError(f"sharding collision: mesh axis {axis!r} used twice in {tuple(logical_axes)}")
        axis_size = mesh.shape[axis] if mesh is not None else 1
        if shape is not None and shape[dim] % (size * axis_size):
          continue
        size *= axis_size
        mesh_axes.append(axis)
        used.add(axis)
      parts.append(tuple(mesh_axes) if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
    return PartitionSpec(*parts)


DEFAULT_RULES = LogicalAxisRules(
  {
    "batch": ("data", "fsdp"),
    "activation_length": (),
    "activation_embed": (),
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "layers": (),
    "norm": (),
  }
)


def _fill(shape: list[int], total: int, names: Sequence[str]) -> list[int]:
  """Replaces one -1 so that the product is `total`; raises naming the keys otherwise."""
  if shape.count(-1) > 1:
    raise ConfigError(f"only one of {', '.join(names)} may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if total % known:
      raise ConfigError(f"{', '.join(names)}: {shape} cannot fill {total} devices")
    shape[shape.index(-1)] = total // known
  if math.prod(shape) != total:
    raise ConfigError(f"{', '.join(names)}: product of {shape} must equal {total}")
  return shape


def mesh_shapes(config, num_devices: int, num_slices: int) -> tuple[list[int], list[int]]:
  ici_names = [f"ici_{a}_parallelism" for a in MESH_AXES]
  dcn_names = [f"dcn_{a}_parallelism" for a in MESH_AXES]
  dcn = _fill([getattr(config, n) for n in dcn_names], num_slices, dcn_names)
  ici = _fill([getattr(config, n) for n in ici_names], num_devices // num_slices, ici_names)
  return ici, dcn


def create_mesh(config, devices: Sequence[jax.Device] | None = None, num_slices: int | None = None) -> Mesh:
  """Mesh over (data, fsdp, tensor); across processes (or the slices of a compile topology, given as
  `num_slices`) the dcn_* axes split between hosts or slices."""
  devices = list(devices if devices is not None else jax.devices())
  check_attention_platform(config.attention, devices[0].platform)
  by_slice = num_slices is not None
  if num_slices is None:
    num_slices = jax.process_count() if devices == jax.devices() else 1
  ici, dcn = mesh_shapes(config, len(devices), num_slices)
  if num_slices > 1:
    device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not by_slice)
  else:
    try:
      device_array = mesh_utils.create_device_mesh(ici, devices)
    except (ValueError, NotImplementedError):  # CPU/fake devices have no topology to respect
      device_array = np.asarray(devices).reshape(ici)
  return Mesh(device_array, MESH_AXES)


def logical_shardings(logical_tree, shape_tree, mesh: Mesh, rules: LogicalAxisRules = DEFAULT_RULES):
  """NamedShardings for a tree of logical-axes tuples matching a tree of arrays/ShapeDtypeStructs."""
  return jax.tree.map(
    lambda axes, x: NamedSharding(mesh, rules.spec(axes, x.shape, mesh)),
    logical_tree,
    shape_tree,
    is_leaf=lambda t: isinstance(t, tuple),
  )


def batch_sharding(mesh: Mesh, rules: LogicalAxisRules = DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, rules.spec(("batch", None)))


def target_platform() -> str:
  """The platform a program being traced is for: that of the mesh set by `jax.set_mesh` (a TPU
  topology compiled ahead of time on a CPU host is "tpu"), else the default backend's."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules: LogicalAxisRules = DEFAULT_RULES):
  """Activation sharding hint under the mesh set by `jax.set_mesh`; a no-op without one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, rules.spec(logical_axes, x.shape, mesh))
