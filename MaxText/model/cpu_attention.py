"""Causal attention for short sequences on the CPU: each block of queries against only the keys it can see.

`flash` holds a sequence of up to `FLASH_BLOCK` tokens in one tile, so on the CPU at the main job's 256
tokens it computes the whole L x L score matrix, half of which the causal mask then throws away, and
its backward recomputes the probabilities twice (once for dq, once for dk and dv). XLA:CPU also
materialises a transposing copy of q, k or v for most of its products, because the tile's einsums mix
the head and the position axes.

This kernel splits the queries into blocks of `ROWS` positions, unrolled at trace time, and multiplies
block i only with keys [0, (i + 1) * ROWS): about half the products' work at these lengths. Every product
is a plain batched matrix product over [B * G, rows, K] arrays, in which the R query heads that share a
key/value head are interleaved with the positions (row = position * R + r), so a block of positions is
a contiguous slice and the products need no transposing copies. Its custom backward recomputes each
block's probabilities once from the saved log-sum-exp (FlashAttention-2's rule) and forms dq, dk and dv
from them. dS stays float32 in its products with q and k even for bf16 inputs (flash rounds it to bf16
for the accelerators' bf16 units; jax 0.10 runs bf16 products on the CPU no faster, docs/speed.md), so
its bf16 gradients stay as close to dot_product's as flash's do.

The forward holds one block's [B * G, ROWS * R, L] scores at a time, at most one `flash` tile, so the
kernel serves lengths up to FLASH_BLOCK (attention.attend sends it those on the CPU). Its time against
flash, dot_product and PyTorch's SDPA at the main job's shapes: `benchmarks/short_attention.py`
(docs/speed.md).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

ROWS = 32  # positions per query block (benchmarks/short_attention.py measures 16, 32, 64)
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _scores(q_blk, k, seg_q, seg_k, first: int, rows: int, reps: int, scale: float):
  """Masked float32 scores [N, rows * reps, E] of the query block starting at position `first` against
  keys [0, E), E = first + rows."""
  end = first + rows
  s = jnp.einsum("nik,njk->nij", q_blk, k[:, :end], preferred_element_type=jnp.float32) * scale
  q_pos = first + jnp.arange(rows * reps) // reps
  causal = q_pos[:, None] >= jnp.arange(end)[None, :]
  same = jnp.repeat(seg_q[:, first:end], reps, axis=1)[:, :, None] == seg_k[:, None, :end]
  return jnp.where(causal[None] & same, s, _MASK_VALUE)


def _forward(q, k, v, seg, rows: int, reps: int):
  """(out [N, L * R, K] in v's dtype, lse [N, L * R] float32)."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  outs, lses = [], []
  for first in range(0, k.shape[1], rows):
    s = _scores(q[:, first * reps : (first + rows) * reps], k, seg, seg, first, rows, reps, scale)
    row_max = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - row_max)
    row_sum = jnp.sum(p, axis=-1, keepdims=True)
    probs = (p / row_sum).astype(v.dtype)
    outs.append(jnp.einsum("nij,njk->nik", probs, v[:, : first + rows], preferred_element_type=jnp.float32))
    lses.append((row_max + jnp.log(row_sum))[..., 0])
  return jnp.concatenate(outs, 1).astype(v.dtype), jnp.concatenate(lses, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _prefix(q, k, v, seg, rows: int, reps: int):
  return _forward(q, k, v, seg, rows, reps)[0]


def _prefix_fwd(q, k, v, seg, rows: int, reps: int):
  out, lse = _forward(q, k, v, seg, rows, reps)
  return out, (q, k, v, seg, out, lse)


def _prefix_bwd(rows: int, reps: int, residuals, d_out):
  q, k, v, seg, out, lse = residuals
  scale = 1.0 / math.sqrt(q.shape[-1])
  length = k.shape[1]
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [N, L * R]
  dq_blocks, dk, dv = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
  for first in range(0, length, rows):
    end, span = first + rows, slice(first * reps, (first + rows) * reps)
    q_blk, do_blk = q[:, span], d_out[:, span]
    p = jnp.exp(_scores(q_blk, k, seg, seg, first, rows, reps, scale) - lse[:, span, None])  # masked: 0
    dp = jnp.einsum("nik,njk->nij", do_blk, v[:, :end], preferred_element_type=jnp.float32)
    ds = p * (dp - delta[:, span, None])
    dq_blocks.append(jnp.einsum("nij,njk->nik", ds, k[:, :end].astype(jnp.float32)))
    widen = [(0, 0), (0, length - end), (0, 0)]  # this block's keys are the first `end`
    dk = dk + jnp.pad(jnp.einsum("nij,nik->njk", ds, q_blk.astype(jnp.float32)), widen)
    dv = dv + jnp.pad(jnp.einsum("nij,nik->njk", p.astype(v.dtype), do_blk, preferred_element_type=jnp.float32), widen)
  dq = jnp.concatenate(dq_blocks, 1) * scale
  return dq.astype(q.dtype), (dk * scale).astype(k.dtype), dv.astype(v.dtype), None


_prefix.defvjp(_prefix_fwd, _prefix_bwd)


def short_causal_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, rows: int = ROWS) -> jax.Array:
  """Causal, segment-aware GQA, each query block against its visible keys only; [B, L, H, K] like `attend`.

  A length that is not a multiple of `rows` is padded with a segment id of its own (-1), which no real
  token shares, and the padding is cut off the result.
  """
  batch, length, heads, dim = q_BxLxHxK.shape
  groups = k_BxLxGxK.shape[2]
  reps = heads // groups
  rows = min(rows, length)
  pad = -length % rows
  if pad:
    widen = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    q_BxLxHxK, k_BxLxGxK, v_BxLxGxK = widen(q_BxLxHxK), widen(k_BxLxGxK), widen(v_BxLxGxK)
    segment_ids_BxL = jnp.pad(segment_ids_BxL, [(0, 0), (0, pad)], constant_values=-1)
  padded = length + pad
  # [B, L, G, R, K] -> [B * G, L * R, K]: row = position * R + r
  q = q_BxLxHxK.reshape(batch, padded, groups, reps, dim).transpose(0, 2, 1, 3, 4).reshape(-1, padded * reps, dim)
  k, v = (x.transpose(0, 2, 1, 3).reshape(-1, padded, dim) for x in (k_BxLxGxK, v_BxLxGxK))
  seg = jnp.repeat(segment_ids_BxL.astype(jnp.int32), groups, axis=0)  # [B * G, L], batch-major like k
  out = _prefix(q, k, v, seg, rows, reps)
  out = out.reshape(batch, groups, padded, reps, dim).transpose(0, 2, 1, 3, 4).reshape(batch, padded, heads, dim)
  return out[:, :length]
