"""`remat_policy=auto` (the default): the fastest rematerialisation whose saved activations fit in memory.

`none` saves every activation of every layer for the backward pass and recomputes nothing; `save_dots`
saves the outputs of the weight products and recomputes the elementwise work between them; `full` saves
each layer's input alone and recomputes the whole layer (a third more compute). MaxText's default is
`full`, which is right when memory is tight and costs speed everywhere else: on the main job's CPU shapes
`none` runs the step faster (docs/speed.md). `auto` takes the first of none, save_dots, full whose
estimated activations, beside the training state and the teacher, fit in HEADROOM of one device's
memory, and the trainer prints the choice with its numbers. A set policy is used as it is.

The estimate counts the arrays each policy keeps per token and layer (the decoder's layer: two norms,
q/k/v and output projections, the gated MLP), in the compute dtype, for one device's tokens of one
micro-batch; with `full`, one layer's full set lives again while it is recomputed. It is an estimate, not
XLA's buffer assignment: the AOT compile job (`train_compile`) measures the real peak of the chosen
program on a TPU topology.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from MaxText.model.params_io import abstract_with_shardings

POLICIES = ("none", "save_dots", "full")  # fastest first: each saves less and recomputes more
HEADROOM = 0.8  # of a device's memory; the rest is for XLA's temporaries, the batch and fragmentation


def saved_per_token(config, policy: str) -> int:
  """Activation elements one layer keeps per token for the backward pass under `policy`."""
  d, f = config.emb_dim, config.mlp_dim
  q, kv = config.num_query_heads * config.head_dim, config.num_kv_heads * config.head_dim
  layer_input = d
  if policy == "full":
    return layer_input
  products = (q + 2 * kv) + d + 2 * f + d  # q, k, v; attention output projection; gate, up; down
  if policy == "save_dots":
    return layer_input + products
  # none: also both norms' outputs, rotated q and k, the attention output, the MLP's activation and product
  elementwise = 2 * d + (q + kv) + q + 2 * f
  scores = config.num_query_heads * config.max_target_length if config.attention == "dot_product" else 0
  return layer_input + products + elementwise + scores


def activation_bytes(config, policy: str) -> int:
  """Estimated bytes of saved activations on one device for one micro-batch under `policy`."""
  tokens = config.per_device_batch_size * config.max_target_length / config.gradient_accumulation_steps
  per_layer = saved_per_token(config, policy) * config.num_decoder_layers
  if policy != "none":  # the layer being recomputed holds everything once more
    per_layer += saved_per_token(config, "none")
  return int(tokens * per_layer * jnp.dtype(config.dtype).itemsize)


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded arrays (concrete or abstract)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    total += int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * jnp.dtype(leaf.dtype).itemsize
  return total


def device_memory(device) -> int | None:
  """Bytes one device may use: its allocator's limit (TPU, GPU), or the host's available memory shared by
  its CPU devices; None when unknown."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  if device.platform != "cpu":
    return None
  available = _host_available_bytes()
  return available // max(jax.local_device_count("cpu"), 1) if available else None


def _host_available_bytes() -> int | None:
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def _least_across_processes(memory_bytes: int | None) -> int | None:
  """Every process must compile the same program: the least memory any of them reports (unknown if any is)."""
  if jax.process_count() == 1:
    return memory_bytes
  from jax.experimental import multihost_utils

  reported = np.asarray(multihost_utils.process_allgather(np.int64(-1 if memory_bytes is None else memory_bytes)))
  return None if (reported < 0).any() else int(reported.min())


@dataclasses.dataclass(frozen=True)
class Choice:
  policy: str
  reason: str


def choose(config, resident_bytes: int, memory_bytes: int | None) -> Choice:
  """The policy `auto` stands for, given the bytes already resident on a device (state, teacher)."""
  if memory_bytes is None:
    return Choice("full", "device memory unknown, so the policy that saves least")
  budget = HEADROOM * memory_bytes - resident_bytes
  for policy in POLICIES:
    needed = activation_bytes(config, policy)
    if needed <= budget:
      return Choice(policy, f"~{_gib(needed)} of activations + {_gib(resident_bytes)} of state and teacher fit "
                            f"{HEADROOM:.0%} of {_gib(memory_bytes)}")  # fmt: skip
  needed = activation_bytes(config, "full")
  return Choice("full", f"even full's ~{_gib(needed)} of activations exceed what is left of {_gib(memory_bytes)}")


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def resolve(config, layout, teacher=None, memory_bytes: int | None = -1):
  """(config with `auto` replaced by the chosen policy, Choice or None when the policy was set). `layout`:
  the student's state layout; `teacher`: its parameters (concrete or abstract, sharded), if any;
  `memory_bytes`: -1 = the first device of the layout's mesh."""
  if config.remat_policy != "auto":
    return config, None
  if memory_bytes == -1:
    mesh = jax.tree.leaves(layout.state_shardings)[0].mesh
    own = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())  # one it can ask
    memory_bytes = _least_across_processes(device_memory(own))
  state = abstract_with_shardings(layout.abstract_state, layout.state_shardings)
  gradients = {key: state[key] for key in state if key not in ("step", "opt_state")}  # one per trainable
  resident = per_device_bytes(state) + per_device_bytes(gradients)
  resident += per_device_bytes(teacher) if teacher is not None else 0
  choice = choose(config, resident, memory_bytes)
  return dataclasses.replace(config, remat_policy=choice.policy), choice
