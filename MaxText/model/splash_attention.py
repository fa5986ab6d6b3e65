"""TPU attention: the Pallas splash kernel shipped in JAX, sharded over the mesh with `shard_map`.

Splash is a blockwise FlashAttention for TPU whose causal mask is known when the kernel is built, so
blocks above the diagonal are skipped and never loaded; segment ids (packed documents) are applied
per tile. The kernel works on one sequence, heads first ([H, L, K]), with queries pre-scaled, and
serves grouped-query attention itself (each group of H/G query heads reads one key/value head).

Outside a mesh, or off TPU, the same kernel runs through Pallas's interpreter (slow, exact): that is
how its numbers are tested on CPU. Under a mesh it runs per shard: the batch split as activations
are ("batch" -> data, fsdp), heads over "tensor", each device attending its own heads of its own
sequences, which needs no communication.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from MaxText.parallel import sharding

ALIGN = 128  # TPU lane width: the sequence is padded to a multiple of it
BLOCKS = (512, 256, 128)  # the largest that divides the padded length is used for every tile


def _splash_modules():
  """JAX's Pallas TPU splash modules, imported when a kernel is built: importing them costs every job
  about half a second on 2 cores, and only runs with attention=splash use them."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel, splash_attention_mask

  return splash_attention_kernel, splash_attention_mask


def _kernel(heads: int, length: int, interpret: bool):
  """A causal splash kernel for `heads` heads of `length` tokens. Built inside the trace that uses it
  (its block tables become that program's constants), so nothing traced outlives the trace."""
  splash, splash_mask = _splash_modules()
  block = next(b for b in BLOCKS if length % b == 0)
  sizes = splash.BlockSizes(
    block_q=block,
    block_kv=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length)) for _ in range(heads)])
  return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _attend_shard(q_BxHxLxK, k_BxGxLxK, v_BxGxLxK, segment_ids_BxL, interpret: bool):
  """Splash over the sequences and heads of one shard (all arrays local)."""
  kernel = _kernel(q_BxHxLxK.shape[1], q_BxHxLxK.shape[2], interpret)

  segment_ids_of = _splash_modules()[0].SegmentIds

  def one_sequence(q, k, v, segment_ids):
    return kernel(q, k, v, segment_ids=segment_ids_of(q=segment_ids, kv=segment_ids))

  return jax.vmap(one_sequence)(q_BxHxLxK, k_BxGxLxK, v_BxGxLxK, segment_ids_BxL)


def _sharded(fn, q, k, v, segment_ids):
  """Runs `fn` per shard of the mesh set by `jax.set_mesh`, split as the model's activations are."""
  mesh = jax.sharding.get_abstract_mesh()
  rules = sharding.DEFAULT_RULES
  q_spec = rules.spec(("batch", "heads", None, None), q.shape, mesh)
  kv_spec = rules.spec(("batch", "kv_heads", None, None), k.shape, mesh)
  if kv_spec[1] != q_spec[1]:
    # Key/value heads that the "tensor" axis cannot split the way it splits query heads: give every
    # query head its own copy, so each shard holds the key/value heads of its query heads.
    k, v = (jnp.repeat(x, q.shape[1] // x.shape[1], axis=1) for x in (k, v))
    kv_spec = q_spec
  segment_spec = PartitionSpec(q_spec[0], None)
  return jax.shard_map(
    fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, segment_spec), out_specs=q_spec, check_vma=False
  )(q, k, v, segment_ids)


def splash_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL) -> jax.Array:
  """Causal, segment-aware GQA with the splash kernel; [B, L, H, K] in v's dtype.

  A length that is not a multiple of 128 is padded with a segment id of its own (-1), which no real
  token shares, and the padding is cut off the result.
  """
  length, head_dim = q_BxLxHxK.shape[1], q_BxLxHxK.shape[3]
  pad = -length % ALIGN
  segment_ids_BxL = segment_ids_BxL.astype(jnp.int32)
  if pad:
    widen = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    q_BxLxHxK, k_BxLxGxK, v_BxLxGxK = widen(q_BxLxHxK), widen(k_BxLxGxK), widen(v_BxLxGxK)
    segment_ids_BxL = jnp.pad(segment_ids_BxL, [(0, 0), (0, pad)], constant_values=-1)
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)
  q = heads_first(q_BxLxHxK * jnp.asarray(1.0 / math.sqrt(head_dim), q_BxLxHxK.dtype))
  k, v = heads_first(k_BxLxGxK), heads_first(v_BxLxGxK)
  attend = functools.partial(_attend_shard, interpret=sharding.target_platform() != "tpu")
  if jax.sharding.get_abstract_mesh().empty:
    out_BxHxLxK = attend(q, k, v, segment_ids_BxL)
  else:
    out_BxHxLxK = _sharded(attend, q, k, v, segment_ids_BxL)
  return heads_first(out_BxHxLxK)[:, :length].astype(v_BxLxGxK.dtype)
