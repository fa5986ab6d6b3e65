"""Weight-only int8 for a frozen teacher (`kd_teacher_dtype=int8`): each matmul weight held as int8 values
and one float32 scale per output channel (absmax / 127 over the weight's input axes), dequantized to the
compute dtype where the matmul reads it.

An `Int8Weight` stands where the decoder holds an array: the decoder reads every matmul weight with
`.astype(compute dtype)`, which here is `values * scale`, so the model code is the same for both; inside
the scanned layer loop that happens one layer at a time, so the teacher's weights stay int8 in memory
(half the bytes of bfloat16) and only the layer being run is ever dequantized. The embedding is quantized
per token row: a lookup dequantizes the rows it gathers, and the tied output matrix is its transpose
(one scale per vocabulary column). Norm scales and biases stay as they are (a few thousand numbers).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

# the input (contracted) axes of each matmul weight, whose absmax sets the scale of each output channel
CONTRACTED_AXES = {
  "query": (1,),  # [layers, embed, heads, head_dim]
  "key": (1,),
  "value": (1,),
  "out": (1, 2),  # [layers, heads, head_dim, embed]
  "wi_gate": (1,),  # [layers, embed, mlp]
  "wi_up": (1,),
  "wo": (1,),  # [layers, mlp, embed]
  "token_embedder": (1,),  # [vocab, embed]: one scale per token row (its transpose is the tied output matrix)
  "lm_head": (0,),  # [embed, vocab]
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Int8Weight:
  values: jax.Array  # int8, the weight's shape
  scale: jax.Array  # float32, the weight's shape with its contracted axes of size 1

  def astype(self, dtype) -> jax.Array:
    return self.values.astype(dtype) * self.scale.astype(dtype)

  def __getitem__(self, index):  # `param[...]` reads it whole; slices keep values and scales aligned
    return self if index is Ellipsis else Int8Weight(self.values[index], self.scale[index])

  @property
  def T(self) -> Int8Weight:  # noqa: N802 - numpy's name
    return Int8Weight(self.values.T, self.scale.T)

  @property
  def shape(self) -> tuple[int, ...]:
    return self.values.shape

  @property
  def dtype(self):
    return self.values.dtype


def quantize(w: jax.Array, contracted: tuple[int, ...]) -> Int8Weight:
  w32 = w.astype(jnp.float32)
  absmax = jnp.max(jnp.abs(w32), axis=contracted, keepdims=True)
  scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
  values = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
  return Int8Weight(values, scale)


def _map_matmul_weights(params: dict, fn) -> dict:
  """`params` (the decoder's pure dict) with fn(weight, contracted axes) applied to each matmul weight."""
  out = {}
  for name, value in params.items():
    if isinstance(value, dict):
      out[name] = _map_matmul_weights(value, fn)
    else:
      out[name] = fn(value, CONTRACTED_AXES[name]) if name in CONTRACTED_AXES else value
  return out


def quantize_params(params: dict) -> dict:
  return _map_matmul_weights(params, quantize)


def abstract_params(abstract: dict) -> dict:
  """The shapes and dtypes of quantize_params(params) for abstract `params`."""
  return jax.eval_shape(quantize_params, abstract)


def _scale_sharding(sharding: NamedSharding, contracted: tuple[int, ...]) -> NamedSharding:
  spec = list(sharding.spec) + [None] * (max(contracted) + 1 - len(sharding.spec))
  for axis in contracted:
    spec[axis] = None  # a size-1 axis is not split
  return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def shardings(param_shardings: dict) -> dict:
  """The quantized weights' shardings: the values as the float weight, the scales without its input axes."""
  return _map_matmul_weights(param_shardings, lambda s, axes: Int8Weight(s, _scale_sharding(s, axes)))


def embed(table, tokens_BxL: jax.Array, dtype) -> jax.Array:
  """Embedding lookup of a plain table or an Int8Weight one (only the gathered rows are dequantized)."""
  if isinstance(table, Int8Weight):
    rows = jnp.take(table.values, tokens_BxL, axis=0).astype(dtype)
    return rows * jnp.take(table.scale, tokens_BxL, axis=0).astype(dtype)
  return jnp.take(table, tokens_BxL, axis=0).astype(dtype)


def nbytes(params) -> int:
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
