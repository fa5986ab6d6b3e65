"""Token-chunked evaluation of per-token losses, so that loss memory does not grow with batch x length.

Per-token losses never need the full [batch x length x vocab] logits: `chunked_sums` slices the
tokens into chunks, projects each chunk to the vocabulary inside a rematerialised scan body, and
returns only summed scalars, so loss memory is set by `loss_chunk_size`. `chunked_loss`, what training
uses, takes each chunk's gradient in the same forward pass, so that no chunk is computed twice.
`chunked_map` is the same slicing for per-token outputs (the offline cache's top-k fields).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from MaxText.parallel.sharding import DEFAULT_RULES, constrain


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


def _batch_shards(tokens: int) -> int:
  """Over how many devices the batch's mesh axes split a token axis of this length (1 without a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  axes = DEFAULT_RULES.spec(("batch",), (tokens,), mesh)[0] or ()
  return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def _chunk_shape(n: int, chunk_size: int) -> tuple[int, int]:
  """(tokens per chunk, number of chunks) for N tokens and `chunk_size` tokens per device.

  A chunk holds `chunk_size` times the devices the tokens are split over. (Each chunk's unembedding
  gradient is summed across those devices, one all-reduce of [D, V] per chunk, so the count of chunks
  must not grow with the mesh.) The chunks are then made as even as they can be: the fewest fill rows.
  """
  shards = _batch_shards(n)
  chunk = min(chunk_size * shards, n)
  num_chunks = -(-n // chunk)
  if num_chunks > 1:
    even = -(-n // num_chunks)
    chunk = -(-even // shards) * shards
  return chunk, num_chunks


def _strided(x, chunk: int, num_chunks: int):
  """[N, ...] -> [chunk, num_chunks, ...] (zero rows fill the end): chunk c is column c.

  Chunk c holds tokens c, c + num_chunks, c + 2 num_chunks, ...: strided, not consecutive. The token
  axis arrives sharded in contiguous blocks over the batch's mesh axes; read as [chunk, num_chunks],
  each device keeps its block of every chunk, so each step of the loop over chunks works on all
  devices at once with no data moved. Consecutive chunks would each live on one device, and the loop
  would gather every chunk to every device (the whole batch's hidden states, and the loss computed
  once per device). Sums do not depend on which tokens share a chunk.
  """
  strided = _pad_rows(x, num_chunks * chunk).reshape(chunk, num_chunks, *x.shape[1:])
  return constrain(strided, ("batch", *[None] * x.ndim))


def _to_chunks(per_token: dict, chunk_size: int) -> tuple[dict, int]:
  """[N, ...] arrays -> [num_chunks, chunk, ...] (a copy, chunk-major: what a scan over chunks reads), and N."""
  n = jax.tree.leaves(per_token)[0].shape[0]
  shape = _chunk_shape(n, chunk_size)
  return jax.tree.map(lambda x: jnp.swapaxes(_strided(x, *shape), 0, 1), per_token), n


def _chunk_views(per_token: dict, chunk_size: int) -> tuple[dict, int, int]:
  """[N, ...] arrays -> [chunk, num_chunks, ...] views (a reshape, no copy), the number of chunks, and N.

  Loops that index one chunk at a time (`_chunk_at`) read these in place: a chunk-major copy of every
  input (and of the per-token gradient on the way back) would cost two passes over arrays as large as
  the inputs, which for logits-sized inputs is more than the loss itself.
  """
  n = jax.tree.leaves(per_token)[0].shape[0]
  chunk, num_chunks = _chunk_shape(n, chunk_size)
  return jax.tree.map(lambda x: _strided(x, chunk, num_chunks), per_token), num_chunks, n


def _chunk_at(views, index):
  """Chunk `index` of `_chunk_views` ([chunk, ...] per leaf)."""
  return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, index, axis=1, keepdims=False), views)


def _put_chunk(views, values, index):
  """`views` with chunk `index` replaced by `values` (in place inside a loop)."""
  return jax.tree.map(lambda x, v: jax.lax.dynamic_update_index_in_dim(x, v, index, axis=1), views, values)


def _zero_view(like):
  """Zeros shaped and split like a `_chunk_views` array: the buffer a loop writes its chunks into."""
  return constrain(jnp.zeros(like.shape, like.dtype), ("batch", *[None] * (len(like.shape) - 1)))


def _from_views(x, n: int):
  """The inverse of `_chunk_views` for one [chunk, num_chunks, ...] array -> [N, ...]."""
  return x.reshape(-1, *x.shape[2:])[:n]


def chunked_sums(chunk_fn: Callable[..., dict], per_token: dict, shared: dict, chunk_size: int) -> dict:
  """Sums `chunk_fn(per_token_chunk, shared)` over token chunks.

  `per_token` holds arrays with a leading token axis N (hidden states, targets, weights, ...);
  rows added to fill the last chunk are zero, so `chunk_fn` must weight every term by the
  `weights` entry. `shared` (e.g. the unembedding matrix) is passed whole to each chunk. The body
  is rematerialised, so the backward pass also holds one chunk of logits at a time. Training uses
  `chunked_loss`, which never recomputes a chunk.
  """
  chunked, _ = _to_chunks(per_token, chunk_size)
  if (
    jax.tree.leaves(chunked)[0].shape[0] == 1
  ):  # one chunk is the memory budget anyway: no need to recompute it in the backward pass
    return chunk_fn(jax.tree.map(lambda x: x[0], chunked), shared)
  body = jax.checkpoint(lambda xs: chunk_fn(xs, shared), policy=jax.checkpoint_policies.nothing_saveable)

  def step(total, xs):
    return jax.tree.map(jnp.add, total, body(xs)), None

  first = body(jax.tree.map(lambda x: x[0], chunked))
  total, _ = jax.lax.scan(step, first, jax.tree.map(lambda x: x[1:], chunked))
  return total


def chunked_loss(
  chunk_fn: Callable[..., dict],
  per_token: dict,
  shared: dict,
  chunk_size: int,
  objective: Callable[[dict], jax.Array],
  wrt: tuple[tuple[str, ...], tuple[str, ...]] = (("hidden",), ("w_DxV",)),
) -> tuple[jax.Array, dict]:
  """(objective, sums) of `chunk_fn` over token chunks, the objective's gradient taken in the same pass.

  `objective(chunk_sums)` is the differentiated scalar of one chunk (summed over chunks); its gradient
  is with respect to the `per_token` and `shared` entries named in `wrt` (the student's hidden states
  and unembedding). The sums are metrics, without gradient. Each chunk's gradient is computed right
  after its value, so the backward pass only scales what the forward pass stored (the gradients of the
  hidden states, [N, D], and of the unembedding): no chunk is projected, pruned or bisected a second
  time, the teacher's projection included, where a rematerialised loop would redo all of it.
  """
  token_keys, shared_keys = wrt
  n = jax.tree.leaves(per_token)[0].shape[0]
  if _chunk_shape(n, chunk_size)[1] == 1:  # one chunk: plain autodiff, nothing recomputed
    sums = chunk_fn(per_token, shared)
    return objective(sums), jax.lax.stop_gradient(sums)

  def value_and_grads(tokens_diff, shared_diff, tokens_rest, shared_rest):
    views_diff, num_chunks, _ = _chunk_views(tokens_diff, chunk_size)
    views_rest = _chunk_views(tokens_rest, chunk_size)[0]

    def with_objective(xs_diff, sh_diff, xs_rest):
      sums = chunk_fn({**xs_rest, **xs_diff}, {**shared_rest, **sh_diff})
      return objective(sums), sums

    def one_chunk(carry, index):
      totals, g_views = carry
      (value, sums), (g_tokens, g_shared) = jax.value_and_grad(with_objective, (0, 1), has_aux=True)(
        _chunk_at(views_diff, index), shared_diff, _chunk_at(views_rest, index)
      )
      return (jax.tree.map(jnp.add, totals, (value, sums, g_shared)), _put_chunk(g_views, g_tokens, index)), None

    first = (_chunk_at(views_diff, 0), shared_diff, _chunk_at(views_rest, 0))
    shapes = jax.eval_shape(with_objective, *first)
    zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)
    init = (zeros((*shapes, shared_diff)), jax.tree.map(_zero_view, views_diff))
    ((value, sums, g_shared), g_views), _ = jax.lax.scan(one_chunk, init, jnp.arange(num_chunks))
    return (value, sums), (jax.tree.map(lambda x: _from_views(x, n), g_views), g_shared)

  @jax.custom_vjp
  def loss(tokens_diff, shared_diff, tokens_rest, shared_rest):
    return value_and_grads(tokens_diff, shared_diff, tokens_rest, shared_rest)[0]

  def loss_bwd(grads, cotangents):
    g = cotangents[0]  # the sums are metrics: stopped below, their cotangents are zero
    g_tokens, g_shared = jax.tree.map(lambda x: (g * x).astype(x.dtype), grads)
    return g_tokens, g_shared, None, None

  loss.defvjp(value_and_grads, loss_bwd)
  split = lambda tree, keys: (
    {k: v for k, v in tree.items() if k in keys},
    {k: v for k, v in tree.items() if k not in keys},
  )
  tokens_diff, tokens_rest = split(per_token, token_keys)
  shared_diff, shared_rest = split(shared, shared_keys)
  value, sums = loss(tokens_diff, shared_diff, tokens_rest, shared_rest)
  return value, jax.lax.stop_gradient(sums)


def chunked_map(chunk_fn: Callable[..., dict], per_token: dict, shared: dict, chunk_size: int) -> dict:
  """Per-token outputs of `chunk_fn(per_token_chunk, shared)` (arrays with a leading chunk-token axis),
  computed one chunk at a time and returned with a leading token axis N (the fill rows dropped)."""
  views, num_chunks, n = _chunk_views(per_token, chunk_size)
  first = jax.eval_shape(chunk_fn, _chunk_at(views, 0), shared)
  buffers = jax.tree.map(
    lambda x: _zero_view(jax.ShapeDtypeStruct((x.shape[0], num_chunks, *x.shape[1:]), x.dtype)), first
  )

  def one_chunk(outputs, index):
    return _put_chunk(outputs, chunk_fn(_chunk_at(views, index), shared), index), None

  outputs, _ = jax.lax.scan(one_chunk, buffers, jnp.arange(num_chunks))
  return jax.tree.map(lambda x: _from_views(x, n), outputs)
