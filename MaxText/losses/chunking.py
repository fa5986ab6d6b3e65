"""Token-chunked evaluation of per-token losses, so that loss memory does not grow with batch x length.

Per-token losses never need the full [batch x length x vocab] logits: `chunked_sums` slices the
tokens into chunks, projects each chunk to the vocabulary inside a rematerialised scan body, and
returns only summed scalars, so loss memory is set by `loss_chunk_size`. `chunked_map` is the same
slicing for per-token outputs (the offline cache's top-k fields).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from MaxText.losses.targets import NUCLEUS_CUT
from MaxText.parallel.sharding import constrain

# what the rematerialised chunk body keeps for its backward pass: per-token values that are cheap to store
# and costly to recompute (the top-p cut is 31 passes over the vocabulary); everything [chunk, vocab] is redone
_SAVED = jax.checkpoint_policies.save_only_these_names(NUCLEUS_CUT)


def token_inputs(hidden_BxLxD, batch) -> dict:
  """Flattens what the chunked loss needs to one token axis (weights: 1 on real targets, 0 on padding)."""
  return {
    "hidden": hidden_BxLxD.reshape(-1, hidden_BxLxD.shape[-1]),
    "targets": batch["targets"].reshape(-1),
    "weights": (batch["targets_segmentation"] != 0).reshape(-1).astype(jnp.float32),
  }


def _pad_rows(x: jax.Array, rows: int) -> jax.Array:
  pad = rows - x.shape[0]
  return x if pad == 0 else jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def _to_chunks(per_token: dict, chunk_size: int) -> tuple[dict, int]:
  """[N, ...] arrays -> [num_chunks, chunk, ...] (zero rows fill the end), and N.

  Chunk c holds tokens c, c + num_chunks, c + 2 num_chunks, ...: strided, not consecutive. The token
  axis arrives sharded in contiguous blocks over the batch's mesh axes; read as [chunk, num_chunks],
  each device keeps its block of every chunk, so each step of the loop over chunks works on all
  devices at once with no data moved. Consecutive chunks would each live on one device, and the loop
  would gather every chunk to every device (the whole batch's hidden states, and the loss computed
  once per device). Sums do not depend on which tokens share a chunk.
  """
  n = jax.tree.leaves(per_token)[0].shape[0]
  chunk = min(chunk_size, n)
  num_chunks = -(-n // chunk)

  def split(x):
    strided = _pad_rows(x, num_chunks * chunk).reshape(chunk, num_chunks, *x.shape[1:])
    return jnp.swapaxes(constrain(strided, ("batch", *[None] * (x.ndim))), 0, 1)

  return jax.tree.map(split, per_token), n


def _from_chunks(x, n: int):
  """The inverse of `_to_chunks` for one per-token output [num_chunks, chunk, ...] -> [N, ...]."""
  return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])[:n]


def chunked_sums(chunk_fn: Callable[..., dict], per_token: dict, shared: dict, chunk_size: int) -> dict:
  """Sums `chunk_fn(per_token_chunk, shared)` over token chunks.

  `per_token` holds arrays with a leading token axis N (hidden states, targets, weights, ...);
  rows added to fill the last chunk are zero, so `chunk_fn` must weight every term by the
  `weights` entry. `shared` (e.g. the unembedding matrix) is passed whole to each chunk. The body
  is rematerialised, so the backward pass also holds one chunk of logits at a time (per-token values
  named in `_SAVED` are kept instead of recomputed).
  """
  chunked, _ = _to_chunks(per_token, chunk_size)
  if (
    jax.tree.leaves(chunked)[0].shape[0] == 1
  ):  # one chunk is the memory budget anyway: no need to recompute it in the backward pass
    return chunk_fn(jax.tree.map(lambda x: x[0], chunked), shared)
  body = jax.checkpoint(lambda xs: chunk_fn(xs, shared), policy=_SAVED)

  def step(total, xs):
    return jax.tree.map(jnp.add, total, body(xs)), None

  first = body(jax.tree.map(lambda x: x[0], chunked))
  total, _ = jax.lax.scan(step, first, jax.tree.map(lambda x: x[1:], chunked))
  return total


def chunked_map(chunk_fn: Callable[..., dict], per_token: dict, shared: dict, chunk_size: int) -> dict:
  """Per-token outputs of `chunk_fn(per_token_chunk, shared)` (arrays with a leading chunk-token axis),
  computed one chunk at a time and returned with a leading token axis N (the fill rows dropped)."""
  chunked, n = _to_chunks(per_token, chunk_size)
  outputs = jax.lax.map(lambda xs: chunk_fn(xs, shared), chunked)
  return jax.tree.map(lambda x: _from_chunks(x, n), outputs)
