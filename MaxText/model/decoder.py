"""The Flax NNX Llama-family decoder. Each parameter is declared once (shape, logical axes, init).

Layers are stored stacked with a leading `layers` axis. `scan_layers=true` runs them with one
compiled body (`jax.lax.scan`); `false` unrolls a Python loop over the same weights, so both
variants share checkpoints and give the same numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from MaxText.config.views import model_config
from MaxText.model import int8_weights, layers
from MaxText.parallel.sharding import constrain

_REMAT_POLICIES = {
  "full": jax.checkpoint_policies.nothing_saveable,
  "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _param(rngs: nnx.Rngs, shape, logical_axes, dtype, std: float | None) -> nnx.Param:
  """A parameter: normal(0, std) when std > 0, zeros when std == 0 (biases), ones when None (norm scales)."""
  if std is None:
    value = jnp.ones(shape, dtype)
  elif std == 0:
    value = jnp.zeros(shape, dtype)
  else:
    value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, logical_axes=tuple(logical_axes))


class DecoderOutput(NamedTuple):
  hidden_BxLxD: jax.Array  # after the final norm, in the compute dtype
  features: jax.Array | tuple | None  # [layers, B, L, D] of the feature asked for (see Decoder.__call__); None if none


class StackedLayers(nnx.Module):
  """Weights of all decoder layers, stacked on a leading `layers` axis."""

  def __init__(self, config, rngs: nnx.Rngs):
    n, d, f = config.num_decoder_layers, config.emb_dim, config.mlp_dim
    h, g, k = config.num_query_heads, config.num_kv_heads, config.head_dim
    wd, std = jnp.dtype(config.weight_dtype), config.init_std
    self.attn_norm = _param(rngs, (n, d), ("layers", "norm"), wd, None)
    self.query = _param(rngs, (n, d, h, k), ("layers", "embed", "heads", "head_dim"), wd, std)
    self.key = _param(rngs, (n, d, g, k), ("layers", "embed", "kv_heads", "head_dim"), wd, std)
    self.value = _param(rngs, (n, d, g, k), ("layers", "embed", "kv_heads", "head_dim"), wd, std)
    self.out = _param(rngs, (n, h, k, d), ("layers", "heads", "head_dim", "embed"), wd, std)
    if config.use_qk_norm:
      self.q_norm = _param(rngs, (n, k), ("layers", "norm"), wd, None)
      self.k_norm = _param(rngs, (n, k), ("layers", "norm"), wd, None)
    if config.use_qkv_bias:
      self.query_bias = _param(rngs, (n, h, k), ("layers", "heads", "head_dim"), wd, 0.0)
      self.key_bias = _param(rngs, (n, g, k), ("layers", "kv_heads", "head_dim"), wd, 0.0)
      self.value_bias = _param(rngs, (n, g, k), ("layers", "kv_heads", "head_dim"), wd, 0.0)
    self.mlp_norm = _param(rngs, (n, d), ("layers", "norm"), wd, None)
    self.wi_gate = _param(rngs, (n, d, f), ("layers", "embed", "mlp"), wd, std)
    self.wi_up = _param(rngs, (n, d, f), ("layers", "embed", "mlp"), wd, std)
    self.wo = _param(rngs, (n, f, d), ("layers", "mlp", "embed"), wd, std)

  def weights(self) -> dict[str, jax.Array]:
    return {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}


class Decoder(nnx.Module):
  def __init__(self, config, rngs: nnx.Rngs):
    self.config = config
    wd = jnp.dtype(config.weight_dtype)
    self.token_embedder = _param(rngs, (config.vocab_size, config.emb_dim), ("vocab", "embed"), wd, config.init_std)
    self.layers = StackedLayers(config, rngs)
    self.final_norm = _param(rngs, (config.emb_dim,), ("norm",), wd, None)
    if not config.logits_via_embedding:
      self.lm_head = _param(rngs, (config.emb_dim, config.vocab_size), ("embed", "vocab"), wd, config.init_std)

  def output_matrix_DxV(self) -> jax.Array:
    """The unembedding matrix (the transposed embedding when tied), in the weight dtype."""
    if self.config.logits_via_embedding:
      return self.token_embedder[...].T
    return self.lm_head[...]

  def __call__(self, tokens_BxL, positions_BxL=None, segment_ids_BxL=None, features: str | None = None):
    """`features` (layers.FEATURES): every layer's attention_output, its residual output with the embedding
    output first ([layers + 1, B, L, D]), or its pre-RoPE (q, k, v) ([layers, B, L, width] each)."""
    config = self.config
    dtype = jnp.dtype(config.dtype)
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.ones_like(tokens_BxL)
    x = int8_weights.embed(self.token_embedder[...], tokens_BxL, dtype)  # a plain table, or an int8 teacher's
    x = constrain(x, ("batch", "activation_length", "activation_embed"))
    embedded_BxLxD = x
    inv_freq = layers.rope_inverse_frequencies(config)

    def body(x_BxLxD, layer_weights):
      return layers.decoder_layer(layer_weights, x_BxLxD, positions_BxL, segment_ids_BxL, inv_freq, config, features)

    if config.remat_policy in _REMAT_POLICIES:  # the trainer resolves `auto` (training/remat.py); an `auto`
      # that reaches the model unresolved (a step built by hand) recomputes nothing, like `none`
      body = jax.checkpoint(body, policy=_REMAT_POLICIES[config.remat_policy], prevent_cse=not config.scan_layers)
    stacked = self.layers.weights()
    if config.scan_layers:
      x, per_layer = jax.lax.scan(body, x, stacked)
    else:
      outputs = []
      for i in range(config.num_decoder_layers):
        x, feature = body(x, jax.tree.map(lambda w, i=i: w[i], stacked))
        outputs.append(feature)
      per_layer = jax.tree.map(lambda *a: jnp.stack(a), *outputs) if features else None
    if features == "residual":
      per_layer = jnp.concatenate([embedded_BxLxD[None], per_layer])
    hidden = layers.rms_norm(x, self.final_norm[...], config.normalization_layer_epsilon)
    return DecoderOutput(hidden, per_layer)

  def logits(self, tokens_BxL, positions_BxL=None, segment_ids_BxL=None) -> jax.Array:
    """Full float32 logits; for tests, parity and generation (training uses the chunked loss)."""
    hidden = self(tokens_BxL, positions_BxL, segment_ids_BxL).hidden_BxLxD
    return jnp.einsum("bld,dv->blv", hidden.astype(jnp.float32), self.output_matrix_DxV().astype(jnp.float32))


def abstract_model(config) -> Decoder:
  """The decoder's structure without values; its graphdef carries the model view of `config` only."""
  return nnx.eval_shape(lambda: Decoder(model_config(config), nnx.Rngs(0)))


def split_params(model: Decoder):
  """(graphdef, pure parameter dict, logical-axes dict) of a model or abstract model."""
  graphdef, state = nnx.split(model)
  axes = jax.tree.map(lambda v: v.get_metadata()["logical_axes"], state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return graphdef, nnx.to_pure_dict(state), nnx.to_pure_dict(axes)


def bind(graphdef, params) -> Decoder:
  """A Decoder over a pure parameter dict (inside jit: traced arrays)."""
  return nnx.merge(graphdef, params)


def init_params(config, param_shardings):
  """Freshly initialised parameters (a pure function of `seed`), created directly in their shardings."""
  init = lambda: split_params(Decoder(model_config(config), nnx.Rngs(config.seed)))[1]
  return jax.jit(init, out_shardings=param_shardings)()


def run_on_batch(model: Decoder, batch: dict, features: str | None = None) -> DecoderOutput:
  """The decoder over a packed batch (MaxText's input names)."""
  return model(batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"], features)


def parameter_count(params) -> int:
  """Parameters (an int8 teacher's scales are not counted: each Int8Weight is its values)."""
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, int8_weights.Int8Weight))
  return sum(x.values.size if isinstance(x, int8_weights.Int8Weight) else x.size for x in leaves)
