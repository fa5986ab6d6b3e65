"""Causal, segment-aware grouped-query attention kernels behind one call, `attend`.

- `dot_product`: the [B, heads, L, L] scores in float32, masked, softmax, weighted sum. Simple and
  fast for short sequences; its memory grows with L^2.
- `flash`: pure-JAX blockwise attention with an online softmax (FlashAttention-2's algorithm) and a
  hand-written backward that recomputes each block's probabilities from the saved log-sum-exp, so
  neither pass holds more than one [B, heads, block, block] tile of scores. Runs on every platform.
- `splash` (TPU, model/splash_attention.py): the Pallas splash kernel shipped in JAX, per shard.
- `cudnn` (NVIDIA GPU, model/cudnn_attention.py): cuDNN's fused flash attention.
`autoselect` picks per platform (`select_kernel`): splash on TPU; flash elsewhere, which
`benchmarks/attention.py` measured faster than dot_product on CPU at every length from 128 to 8192
tokens (forward + backward; 0.76x the time at 128, 0.11x at 8192). On the CPU, `flash` at up to
FLASH_BLOCK tokens runs as `cpu_attention.short_causal_attention`, which skips the masked half of the
products (the same result; the main job's 256 tokens fit one flash tile, which computes all of it). On
GPU it stays flash until cudnn has been run and timed on one (`GPU_DEFAULT`); cudnn is there by name.
Every kernel takes q [B, L, H, K], k and v [B, L, G, K] (G divides H) and segment ids [B, L] and returns
[B, L, H, K] in v's dtype.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from MaxText.config.checks import cudnn_refusal
from MaxText.model import cudnn_attention
from MaxText.model.cpu_attention import short_causal_attention
from MaxText.model.splash_attention import splash_attention
from MaxText.parallel.sharding import target_platform

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
KERNELS = ("autoselect", "dot_product", "flash", "splash", "cudnn")
# What autoselect takes on a GPU when cuDNN serves the model: "flash" until cudnn has run on a GPU
# (tests/test_attention_kernels.py cannot run it without one), then "cudnn".
GPU_DEFAULT = "flash"
FLASH_BLOCK = 512  # tokens per query / key block of `flash` (the largest tile is [B, H, 512, 512] float32)


def select_kernel(kernel: str, platform: str, dtype=jnp.bfloat16, head_dim: int = 128) -> str:
  """The kernel `autoselect` stands for on a platform, for inputs of this dtype and head width."""
  if kernel != "autoselect":
    return kernel
  if platform == "tpu":
    return "splash"
  if platform == "gpu" and GPU_DEFAULT == "cudnn" and cudnn_refusal(jnp.dtype(dtype).name, head_dim) is None:
    return "cudnn"
  return "flash"


def attend(
  q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, kernel: str = "dot_product", max_segments: int = 64
) -> jax.Array:
  """Attention with the named kernel; `max_segments` is the most documents a packed row holds (cudnn)."""
  kernel = select_kernel(kernel, target_platform(), q_BxLxHxK.dtype, q_BxLxHxK.shape[-1])
  args = (q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL)
  if kernel == "flash":
    if target_platform() == "cpu" and q_BxLxHxK.shape[1] <= FLASH_BLOCK:
      return short_causal_attention(*args)  # the same result with about half the products (cpu_attention.py)
    return flash_attention(*args)
  if kernel == "splash":
    return splash_attention(*args)
  if kernel == "cudnn":
    return cudnn_attention.cudnn_attention(*args, max_segments, fallback=flash_attention)
  return dot_product_attention(*args)


def _grouped(q_BxLxHxK, num_kv: int):
  """[B, L, H, K] -> [B, G, R, L, K] (R query heads share each of the G key/value heads)."""
  batch, length, heads, dim = q_BxLxHxK.shape
  return q_BxLxHxK.reshape(batch, length, num_kv, heads // num_kv, dim).transpose(0, 2, 3, 1, 4)


def _ungrouped(x_BxGxRxLxK):
  batch, groups, reps, length, dim = x_BxGxRxLxK.shape
  return x_BxGxRxLxK.transpose(0, 3, 1, 2, 4).reshape(batch, length, groups * reps, dim)


def _mask(q_pos, k_pos, q_seg, k_seg):
  """[B, 1, 1, Lq, Lk] bool: causal within a segment."""
  causal = q_pos[:, None] >= k_pos[None, :]
  same = q_seg[:, :, None] == k_seg[:, None, :]
  return (causal[None] & same)[:, None, None]


def dot_product_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL) -> jax.Array:
  """Causal, segment-aware grouped-query attention over the full score matrix; softmax in float32."""
  length, head_dim = q_BxLxHxK.shape[1], q_BxLxHxK.shape[3]
  q = _grouped(q_BxLxHxK, k_BxLxGxK.shape[2])
  scores_BxGxRxLxT = jnp.einsum("bgrlk,btgk->bgrlt", q, k_BxLxGxK, preferred_element_type=jnp.float32) / math.sqrt(
    head_dim
  )
  positions = jnp.arange(length)
  mask = _mask(positions, positions, segment_ids_BxL, segment_ids_BxL)
  probs = jax.nn.softmax(jnp.where(mask, scores_BxGxRxLxT, MASK_VALUE), axis=-1).astype(v_BxLxGxK.dtype)
  return _ungrouped(jnp.einsum("bgrlt,btgk->bgrlk", probs, v_BxLxGxK))


def _blocks(x, block: int, axis: int):
  """Splits `axis` into [num_blocks, block], the block index moved to the front."""
  shape = x.shape[:axis] + (x.shape[axis] // block, block) + x.shape[axis + 1 :]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblocks(x, axis: int):
  """The inverse of `_blocks` for an array whose block axis is at `axis` after moving it back."""
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2 :])


def _tile(q_blk, k_blk, seg_q, seg_k, i, j, block: int, scale: float):
  """Masked float32 scores [B, G, R, bq, bk] of query block i against key block j."""
  s = jnp.einsum("bgrlk,btgk->bgrlt", q_blk, k_blk, preferred_element_type=jnp.float32) * scale
  mask = _mask(i * block + jnp.arange(block), j * block + jnp.arange(block), seg_q, seg_k)
  return jnp.where(mask, s, MASK_VALUE)


def _flash_forward(q, k, v, seg, block: int):
  """(out [B, G, R, L, K] in v's dtype, lse [B, G, R, L] float32) for grouped q and k/v [B, L, G, K]."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  k_blocks, v_blocks, seg_blocks = _blocks(k, block, 1), _blocks(v, block, 1), _blocks(seg, block, 1)

  def one_query_block(args):
    q_blk, seg_q, i = args

    def one_key_block(j, carry):
      row_max, row_sum, acc = carry  # running max, running sum of exp(s - max), running weighted values
      s = _tile(q_blk, k_blocks[j], seg_q, seg_blocks[j], i, j, block, scale)
      new_max = jnp.maximum(row_max, jnp.max(s, axis=-1))
      p = jnp.exp(s - new_max[..., None])
      correction = jnp.exp(row_max - new_max)
      pv = jnp.einsum("bgrlt,btgk->bgrlk", p.astype(v.dtype), v_blocks[j], preferred_element_type=jnp.float32)
      return new_max, row_sum * correction + jnp.sum(p, axis=-1), acc * correction[..., None] + pv

    stats = q_blk.shape[:-1]
    init = (jnp.full(stats, MASK_VALUE), jnp.zeros(stats), jnp.zeros(q_blk.shape))
    row_max, row_sum, acc = jax.lax.fori_loop(0, i + 1, one_key_block, init)  # later key blocks: all masked
    return (acc / row_sum[..., None]).astype(v.dtype), row_max + jnp.log(row_sum)

  q_blocks = _blocks(q, block, 3)
  out, lse = jax.lax.map(one_query_block, (q_blocks, seg_blocks, jnp.arange(q_blocks.shape[0])))
  return _unblocks(out, 3), _unblocks(lse, 3)


def _flash_backward(q, k, v, seg, out, lse, d_out, block: int):
  """(dq, dk, dv): each tile's probabilities recomputed from the saved lse (FlashAttention-2)."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, G, R, L]
  q_b, do_b, lse_b, delta_b = (_blocks(x, block, 3) for x in (q, d_out, lse, delta))
  k_b, v_b, seg_b = _blocks(k, block, 1), _blocks(v, block, 1), _blocks(seg, block, 1)
  num = q_b.shape[0]

  def probs_and_dscores(i, j):
    s = _tile(q_b[i], k_b[j], seg_b[i], seg_b[j], i, j, block, scale)
    p = jnp.exp(s - lse_b[i][..., None])  # masked entries: exp(-huge) = 0
    dp = jnp.einsum("bgrlk,btgk->bgrlt", do_b[i], v_b[j], preferred_element_type=jnp.float32)
    return p, p * (dp - delta_b[i][..., None])

  def dq_block(i):
    def add(j, dq):
      _, ds = probs_and_dscores(i, j)
      return dq + jnp.einsum("bgrlt,btgk->bgrlk", ds.astype(k.dtype), k_b[j], preferred_element_type=jnp.float32)

    return jax.lax.fori_loop(0, i + 1, add, jnp.zeros(q_b.shape[1:], jnp.float32)) * scale

  def dkv_block(j):
    def add(i, carry):
      dk, dv = carry
      p, ds = probs_and_dscores(i, j)
      dv = dv + jnp.einsum("bgrlt,bgrlk->btgk", p.astype(v.dtype), do_b[i], preferred_element_type=jnp.float32)
      dk = dk + jnp.einsum("bgrlt,bgrlk->btgk", ds.astype(q.dtype), q_b[i], preferred_element_type=jnp.float32)
      return dk, dv

    zeros = jnp.zeros(k_b.shape[1:], jnp.float32)
    dk, dv = jax.lax.fori_loop(j, num, add, (zeros, zeros))  # causal: earlier query blocks never see block j
    return dk * scale, dv

  dq = _unblocks(jax.lax.map(dq_block, jnp.arange(num)), 3)
  dk, dv = jax.lax.map(dkv_block, jnp.arange(num))
  return dq.astype(q.dtype), _unblocks(dk, 1).astype(k.dtype), _unblocks(dv, 1).astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, seg, block: int):
  return _flash_forward(q, k, v, seg, block)[0]


def _flash_fwd(q, k, v, seg, block: int):
  out, lse = _flash_forward(q, k, v, seg, block)
  return out, (q, k, v, seg, out, lse)


def _flash_bwd(block: int, residuals, d_out):
  q, k, v, seg, out, lse = residuals
  dq, dk, dv = _flash_backward(q, k, v, seg, out, lse, d_out, block)
  return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, block: int = FLASH_BLOCK) -> jax.Array:
  """Blockwise causal, segment-aware GQA with an online softmax; memory linear in L (one tile at a time).

  A length that is not a multiple of the block is padded with a segment id of its own (-1), which
  no real token shares, and the padding is cut off the result.
  """
  length = q_BxLxHxK.shape[1]
  block = min(block, length)
  pad = -length % block
  if pad:
    widen = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    q_BxLxHxK, k_BxLxGxK, v_BxLxGxK = widen(q_BxLxHxK), widen(k_BxLxGxK), widen(v_BxLxGxK)
    segment_ids_BxL = jnp.pad(segment_ids_BxL, [(0, 0), (0, pad)], constant_values=-1)
  q = _grouped(q_BxLxHxK, k_BxLxGxK.shape[2])
  out = _flash(q, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL.astype(jnp.int32), block)
  return _ungrouped(out)[:, :length]
