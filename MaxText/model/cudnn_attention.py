"""GPU attention: cuDNN's fused flash attention, with packed documents in cuDNN's ragged layout.

`jax.nn.dot_product_attention(implementation="cudnn")` takes a causal mask and per-row padding but no
segment ids; the cuDNN call under it also takes a packed ("ragged") layout, each row a list of
sequences given by their offsets and lengths, each attended causally on its own. Segment ids are
turned into that layout here: every run of equal ids in a row is one sequence (the packer writes each
document as one run, and the padding tail is a run of its own, so padding attends only to padding,
exactly as under `dot_product`).

The layout has a fixed number of slots per row, `max_segments_per_seq` documents plus the padding
tail; the packer puts at most that many documents in a row. A batch with a row holding more (input
that bypassed the packer) runs `flash` for that step instead, so no token ever attends across
documents.

cuDNN's fused attention takes bf16/fp16 inputs and head widths up to 128 (config/checks.py
`cudnn_refusal` says which configurations it refuses); it runs on NVIDIA GPUs only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def ragged_layout(segment_ids_BxL, slots: int):
  """(offsets [B, slots + 1], lengths [B, slots], runs [B]) of each row's runs of equal segment id.

  Offsets list each run's first token, lengths its token count; unused entries are -1 (cuDNN's
  convention). `runs` counts a row's runs; a row with more runs than slots is cut off after `slots`.
  """
  length = segment_ids_BxL.shape[1]
  starts_BxL = jnp.concatenate(
    [jnp.ones_like(segment_ids_BxL[:, :1], bool), segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1]], axis=1
  )
  runs_B = jnp.sum(starts_BxL, axis=1)
  positions = jnp.arange(length, dtype=jnp.int32)
  # the row's run starts in order, then `length` as filler
  first_tokens = jnp.sort(jnp.where(starts_BxL, positions, length), axis=1)
  width = slots + 1
  if length < width:
    first_tokens = jnp.pad(first_tokens, [(0, 0), (0, width - length)], constant_values=length)
  first_tokens = first_tokens[:, :width]
  ends = jnp.concatenate([first_tokens[:, 1:], jnp.full_like(first_tokens[:, :1], length)], axis=1)
  used = first_tokens < length
  offsets = jnp.where(used, first_tokens, -1).at[:, slots].set(-1)
  lengths = jnp.where(used, ends - first_tokens, -1)[:, :slots]
  return offsets.astype(jnp.int32), lengths.astype(jnp.int32), runs_B


def _cudnn_ragged(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, offsets, lengths):
  """cuDNN's fused attention over the ragged layout, causal within each sequence."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn  # the only entry that takes the ragged layout

  return cudnn.dot_product_attention(
    q_BxLxHxK,
    k_BxLxGxK,
    v_BxLxGxK,
    q_seqlen=lengths,
    kv_seqlen=lengths,
    q_offsets=offsets,
    kv_offsets=offsets,
    scale=1.0 / math.sqrt(q_BxLxHxK.shape[-1]),
    mask_type=cudnn.MaskType.PADDING_CAUSAL,
    qkv_layout="BTNH",
  )


def cudnn_attention(
  q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL, max_segments: int, fallback, ragged=_cudnn_ragged
):
  """Causal, segment-aware GQA with cuDNN; [B, L, H, K] in v's dtype.

  `fallback(q, k, v, segment_ids)` serves a batch with an over-full row; `ragged` is the attention
  over (q, k, v, offsets, lengths) (cuDNN's; tests pass an exact reference of the same layout).
  """
  offsets, lengths, runs_B = ragged_layout(segment_ids_BxL, max_segments + 1)
  fits = jnp.all(runs_B <= max_segments + 1)
  out = jax.lax.cond(
    fits,
    lambda: ragged(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, offsets, lengths).astype(v_BxLxGxK.dtype),
    lambda: fallback(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL),
  )
  return out
