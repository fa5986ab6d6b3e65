"""Ahead-of-time compilation of a run's exact train step for a TPU topology, on any host (libtpu needed).

The step is built as `train.py` builds it (plain CE, online KD with its teacher, offline KD, feature
KD, gradient accumulation) and lowered against abstract arrays sharded on a mesh of the target's
devices, so nothing is allocated and no file is read. XLA's memory analysis then tells what one chip
holds; a program that does not fit fails to compile on TPU, and that error is turned into a verdict.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp

from MaxText.config.errors import ConfigError, UserError
from MaxText.config.views import feature_alignment
from MaxText.data import teacher_cache
from MaxText.distill.teacher import abstract_teacher, cached_teacher, cross_tokenizer_teacher
from MaxText.model.attention import select_kernel
from MaxText.model.params_io import abstract_with_shardings
from MaxText.parallel import sharding
from MaxText.training import remat
from MaxText.training.state import HEAD, make_layout
from MaxText.training.step import jit_train_step

GIB = 2**30
BATCH_KEYS = ("inputs", "inputs_position", "inputs_segmentation", "targets", "targets_segmentation")
# generation -> (TensorCores per chip, HBM GiB per chip, topology rank). `<generation>-<N>` counts
# TensorCores, as Cloud TPU names slices (v5p-16: 8 chips of 2 cores; v5e-256: 256 chips of 1).
GENERATIONS = {"v4": (2, 32, 3), "v5p": (2, 95, 3), "v5e": (1, 16, 2), "v6e": (1, 32, 2)}


class OverCapacityError(UserError):
  """The step does not fit the chips' memory."""


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str
  generation: str
  chips: int
  num_slices: int
  hbm_bytes: int

  def devices(self):
    from jax.experimental import topologies

    shape, host = _shape(self.generation, self.chips)
    desc = topologies.get_topology_desc(
      platform="tpu",
      topology_name=f"{self.generation}:{'x'.join(map(str, shape))}",
      chip_config_name="default",
      chips_per_host_bounds=host,
      num_slices=self.num_slices,
    )
    return list(desc.devices)


def _shape(generation: str, chips: int) -> tuple[tuple[int, ...], tuple[int, int, int]]:
  """The chip grid of one slice and the chips of one host (what libtpu's topology description takes)."""
  if GENERATIONS[generation][2] == 3:  # v4 / v5p: 3D tori, hosts of 2x2x1 chips
    dims = [1, 1, 1] if chips < 4 else [2, 2, 1]
    for _ in range(int(math.log2(chips)) - (0 if chips < 4 else 2)):
      smallest = min(dims)
      dims[max(i for i, d in enumerate(dims) if d == smallest)] *= 2  # grow the last of the smallest sides
    return tuple(dims), (2, 2, 1) if chips >= 4 else tuple(dims)
  side = 2 ** (int(math.log2(chips)) // 2)  # v5e / v6e: 2D, hosts of 2x2 chips (2x4 for an 8-chip host)
  host = (2, 4, 1) if chips == 8 else ((2, 2, 1) if chips >= 4 else (side, chips // side, 1))
  return (side, chips // side), host


def parse_topology(name: str, num_slices: int) -> Topology:
  match = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name.strip())
  if not match:
    raise ConfigError(
      f"compile_topology: expected <generation>-<TensorCores>, generation one of {', '.join(GENERATIONS)} "
      f"(e.g. v5p-16), got {name!r}"
    )
  generation, cores = match.group(1), int(match.group(2))
  per_chip, hbm_gib, _ = GENERATIONS[generation]
  chips = cores // per_chip
  if cores % per_chip or chips < 1 or chips & (chips - 1):
    raise ConfigError(f"compile_topology: {name!r} is not a power-of-two number of {generation} chips")
  if num_slices < 1:
    raise ConfigError(f"compile_topology_num_slices: expected >= 1, got {num_slices}")
  return Topology(name, generation, chips, num_slices, hbm_gib * GIB)


def _batch(config, mesh, global_batch: int) -> dict:
  """The abstract batch: tokens, and for offline KD the cached teacher fields the step reads."""
  shape, spec = (global_batch, config.max_target_length), sharding.batch_sharding(mesh)
  batch = {key: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=spec) for key in BATCH_KEYS}
  if config.use_kd and config.kd_offline_data_dir:
    k, temperatures = config.kd_top_k or config.kd_offline_top_k, teacher_cache.temperatures(config)
    version = teacher_cache.format_spec(config)["format_version"]
    value_dtype = teacher_cache.batch_value_dtype(version, config.kd_offline_logits_dtype)
    batch["teacher_values"] = jax.ShapeDtypeStruct((*shape, k), value_dtype, sharding=spec)
    batch["teacher_ids"] = jax.ShapeDtypeStruct((*shape, k), jnp.int32, sharding=spec)
    batch["teacher_lse"] = jax.ShapeDtypeStruct((global_batch, len(temperatures), shape[1]), jnp.float32, sharding=spec)
  if config.use_kd and config.kd_teacher_tokenizer_path:  # the teacher's own token stream and the alignment
    teacher_shape = (global_batch, config.kd_teacher_max_target_length or config.max_target_length)
    for key in BATCH_KEYS:
      batch[f"teacher_{key}"] = jax.ShapeDtypeStruct(teacher_shape, jnp.int32, sharding=spec)
    for key in ("kd_head", "kd_teacher_head", "kd_single", "kd_aligned", "kd_bytes"):
      batch[key] = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=spec)
  return batch


def _teacher(config, mesh):
  """(source, abstract teacher state) without reading a file: the cache's fields ride in the batch."""
  if not config.use_kd:
    return None, None
  if config.kd_offline_data_dir:
    index = teacher_cache.lse_index(teacher_cache.temperatures(config), config)
    return cached_teacher(config, index), None
  if config.kd_teacher_tokenizer_path:  # reads the two tokenizers (the vocabulary maps), no weights
    source, abstract_params = cross_tokenizer_teacher(config, mesh)
  else:
    source, abstract_params = abstract_teacher(config, mesh)
  return source, abstract_with_shardings(abstract_params, source.param_shardings)


@dataclasses.dataclass(frozen=True)
class CompileReport:
  """Per-device bytes of one chip of the topology, and XLA's FLOP estimate of the step."""

  topology: Topology
  devices: int
  global_batch: int
  parts: dict  # parameters, kd_head, optimizer state, teacher, batch (from the shardings)
  argument_bytes: int  # XLA memory analysis from here on
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  flops: float
  attention: str = ""  # the kernel the step uses on the topology (what `autoselect` stands for there)
  remat: str = ""  # the policy compiled (what `auto` chose, and why)

  @property
  def peak_bytes(self) -> int:
    """Arguments + temporaries + outputs not written in place of a donated argument."""
    return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.topology.hbm_bytes


_ITEMSIZE = {"f64": 8, "f32": 4, "i32": 4, "ui32": 4, "bf16": 2, "f16": 2, "i16": 2, "i8": 1, "ui8": 1, "i1": 1}


def largest_arrays(program_text: str, count: int = 3) -> list[str]:
  """The largest array types in a lowered (StableHLO) program, e.g. 'f32[8,32,8192,8192] 64.00 GiB'."""
  sizes = {}
  for dims, dtype in re.findall(r"tensor<((?:\d+x)+)(\w+)>", program_text):
    shape = [int(d) for d in dims.rstrip("x").split("x")]
    if dtype in _ITEMSIZE:
      sizes[f"{dtype}[{','.join(map(str, shape))}]"] = math.prod(shape) * _ITEMSIZE[dtype]
  top = sorted(sizes.items(), key=lambda item: -item[1])[:count]
  return [f"{name} {size / GIB:,.2f} GiB" for name, size in top]


def _over_capacity(message: str, topology: Topology, program_text: str) -> OverCapacityError:
  """The compiler's out-of-memory report in one line: how much, and the largest arrays of the step."""
  needed = re.search(r"required for ([\w ]+?) \(([\d.]+\w?)\) exceeds available HBM \(([\d.]+\w?)\)", message)
  used = re.search(r"Used ([\d.]+\w?) of ([\d.]+\w?) hbm", message)
  if needed:
    amount = f"{needed.group(1)} need {needed.group(2)} per chip, {needed.group(3)} available"
  elif used:
    amount = f"it needs {used.group(1)} per chip, {used.group(2)} available"
  else:
    amount = message.strip().splitlines()[0][:160]
  arrays = "; ".join(largest_arrays(program_text))
  return OverCapacityError(
    f"does not fit {topology.name}: {amount}; largest arrays of the step (global shapes): {arrays}"
  )


def compile_step(config, topology: Topology) -> CompileReport:
  devices = topology.devices()
  mesh = sharding.create_mesh(config, devices, topology.num_slices)
  exact = config.per_device_batch_size * len(devices)
  global_batch = int(round(exact))
  if abs(exact - global_batch) > 1e-9 or global_batch < 1 or global_batch % config.gradient_accumulation_steps:
    raise ConfigError(
      f"per_device_batch_size: {config.per_device_batch_size} x {len(devices)} devices is not a whole number of "
      f"sequences divisible by gradient_accumulation_steps"
    )
  layout = make_layout(config, mesh, feature_alignment(config))
  source, teacher = _teacher(config, mesh)
  config, choice = remat.resolve(config, layout, teacher, topology.hbm_bytes)  # `auto`: for these chips
  if choice is not None:
    layout = make_layout(config, mesh, feature_alignment(config))
  state = abstract_with_shardings(layout.abstract_state, layout.state_shardings)
  batch = _batch(config, mesh, global_batch)
  step = jit_train_step(config, layout, source, sharding.batch_sharding(mesh))
  with jax.set_mesh(mesh):
    lowered = step.lower(state, teacher, batch)
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001 - XlaRuntimeError; only an out-of-memory one is a verdict
    if "Ran out of memory" in str(e) or "RESOURCE_EXHAUSTED" in str(e):
      raise _over_capacity(str(e), topology, lowered.as_text()) from None
    raise
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  parts = {
    "parameters": remat.per_device_bytes(state["params"]),
    "kd_head": remat.per_device_bytes(state.get(HEAD, {})),
    "optimizer state": remat.per_device_bytes(state["opt_state"]),
    "teacher": remat.per_device_bytes(teacher) if teacher is not None else 0,
    "batch": remat.per_device_bytes(batch),
  }
  return CompileReport(
    topology,
    len(devices),
    global_batch,
    parts,
    memory.argument_size_in_bytes,
    memory.output_size_in_bytes,
    memory.alias_size_in_bytes,
    memory.temp_size_in_bytes,
    float((cost or {}).get("flops", float("nan"))),
    select_kernel(config.attention, "tpu", jnp.dtype(config.dtype), config.head_dim),
    f"auto -> {choice.policy} ({choice.reason})" if choice is not None else config.remat_policy,
  )


def format_report(report: CompileReport) -> str:
  gib = lambda n: f"{n / GIB:,.2f} GiB" if n >= GIB else f"{n / 2**20:,.1f} MiB"
  hbm = report.topology.hbm_bytes
  lines = [
    f"{report.topology.name}: {report.devices} devices, global batch {report.global_batch}, "
    f"{report.attention} attention, remat_policy {report.remat}; per device:",
    *[f"  {name:<16} {gib(size)}" for name, size in report.parts.items() if size],
    f"  {'temporaries':<16} {gib(report.temp_bytes)}",
    f"  {'total (peak)':<16} {gib(report.peak_bytes)} of {gib(hbm)} HBM ({100 * report.peak_bytes / hbm:.0f}%)",
    f"  XLA estimate: {report.flops / 1e12:,.1f} TFLOP per device per step",
    "fits" if report.fits else f"does not fit: {gib(report.peak_bytes)} needed, {gib(hbm)} available per chip",
  ]
  return "\n".join(lines)
