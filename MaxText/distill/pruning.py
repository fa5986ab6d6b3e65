"""Structured pruning of a teacher into a student's starting point (Minitron: Muralidharan et al., 2024).

Importance is measured on a few calibration batches of the teacher, in one pass over its layers:
- depth: per layer, the mean over tokens of 1 - cos(layer input, layer output) (how much the block
  changes the residual stream), or, with `metric="loss"`, how much the calibration loss rises when
  the layer is skipped (its two output projections zeroed: the block becomes the identity);
- width, from activation magnitudes (mean |.| over tokens): MLP neurons from the activations fed to
  `wo`; attention heads from the norm of each head's output, summed over the query heads of a KV
  group so that whole groups go (keys/values stay shared as the teacher shares them); residual
  channels from the two RMSNorm outputs of every kept layer.

Each layer keeps its own most important neurons and groups (the count is the same for all layers, so
the stacked layout stays); channels are one global choice, as the residual stream is shared. Kept
indices stay in ascending order, so pruning nothing returns the teacher unchanged.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from MaxText.model import decoder, layers


@dataclasses.dataclass(frozen=True)
class Importance:
  layers: np.ndarray  # [n] depth score (higher = more important)
  heads: np.ndarray  # [n, h] mean norm of each head's attention output
  neurons: np.ndarray  # [n, f] mean |silu(gate) * up|
  channels: np.ndarray  # [n, d] mean |RMSNorm output| (attention + MLP norms) per layer


@dataclasses.dataclass(frozen=True)
class Plan:
  layers: np.ndarray  # [n'] kept layer indices
  kv_groups: np.ndarray  # [n', g'] kept KV heads of each kept layer
  neurons: np.ndarray  # [n', f'] kept MLP neurons of each kept layer
  channels: np.ndarray  # [d'] kept residual channels
  heads_per_group: int


def _token_weights(batch) -> jax.Array:
  return (batch["inputs_segmentation"] != 0).astype(jnp.float32)


def _mean_over_tokens(x_BxLx_, w_BxL) -> jax.Array:
  return jnp.einsum("bl...,bl->...", x_BxLx_.astype(jnp.float32), w_BxL)


def _layer_statistics(x_BxLxD, p, batch, inv_freq, config):
  """(layer output, per-layer sums over tokens) for one calibration batch."""
  positions, segments = batch["inputs_position"], batch["inputs_segmentation"]
  w = _token_weights(batch)
  attn_in, attended_BxLxHxK, attn_out = layers.attention_block(p, x_BxLxD, positions, segments, inv_freq, config)
  mid = x_BxLxD + attn_out
  mlp_in, hidden_BxLxF, mlp_out = layers.mlp_block(p, mid, config)
  out = mid + mlp_out
  x32, out32 = x_BxLxD.astype(jnp.float32), out.astype(jnp.float32)
  cosine = jnp.sum(x32 * out32, -1) / (jnp.linalg.norm(x32, axis=-1) * jnp.linalg.norm(out32, axis=-1) + 1e-12)
  sums = {
    "layers": _mean_over_tokens(1.0 - cosine, w),
    "heads": _mean_over_tokens(jnp.linalg.norm(attended_BxLxHxK.astype(jnp.float32), axis=-1), w),
    "neurons": _mean_over_tokens(jnp.abs(hidden_BxLxF), w),
    "channels": _mean_over_tokens(jnp.abs(attn_in), w) + _mean_over_tokens(jnp.abs(mlp_in), w),
  }
  return out, sums


@functools.partial(jax.jit, static_argnums=2)
def _batch_statistics(params, batch, config):
  x = jnp.take(params["token_embedder"], batch["inputs"], axis=0).astype(jnp.dtype(config.dtype))
  inv_freq = layers.rope_inverse_frequencies(config)
  body = lambda x, p: _layer_statistics(x, p, batch, inv_freq, config)
  _, sums = jax.lax.scan(body, x, params["layers"])
  return sums, jnp.sum(_token_weights(batch))


@functools.partial(jax.jit, static_argnums=(0,))
def _calibration_loss(graphdef, params, batch):
  """Mean next-token cross-entropy over the batch's real targets (full logits: calibration is small)."""
  model = decoder.bind(graphdef, params)
  logits = model.logits(batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"])
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
  w = (batch["targets_segmentation"] != 0).astype(jnp.float32)
  return jnp.sum(nll * w), jnp.sum(w)


def _mean_loss(graphdef, params, batches) -> float:
  totals = [_calibration_loss(graphdef, params, b) for b in batches]
  return float(sum(t[0] for t in totals) / sum(t[1] for t in totals))


def skip_losses(config, params, batches) -> np.ndarray:
  """[n]: calibration loss with each layer skipped (its `out` and `wo` zeroed) minus the full model's."""
  graphdef, _, _ = decoder.split_params(decoder.abstract_model(config))
  base = _mean_loss(graphdef, params, batches)
  rises = []
  for i in range(config.num_decoder_layers):
    skipped = dict(params, layers=dict(params["layers"]))
    for name in ("out", "wo"):
      skipped["layers"][name] = params["layers"][name].at[i].set(0)
    rises.append(_mean_loss(graphdef, skipped, batches) - base)
  return np.asarray(rises)


def measure_importance(config, params, batches, metric: str = "cosine") -> Importance:
  """Importance scores of `params` (a model of `config`) on the calibration `batches`."""
  model_config = decoder.abstract_model(config).config
  params = jax.tree.map(jnp.asarray, params)
  totals, count = None, 0.0
  for batch in batches:
    sums, tokens = _batch_statistics(params, batch, model_config)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    count += float(tokens)
  means = {k: np.asarray(v) / count for k, v in totals.items()}
  depth = skip_losses(config, params, batches) if metric == "loss" else means["layers"]
  return Importance(layers=depth, heads=means["heads"], neurons=means["neurons"], channels=means["channels"])


def _top(scores: np.ndarray, keep: int) -> np.ndarray:
  """Indices of the `keep` largest scores, ascending (a stable sort keeps earlier indices on ties)."""
  order = np.argsort(-scores, kind="stable")
  return np.sort(order[:keep])


def make_plan(importance: Importance, config) -> Plan:
  n, h, g = config.num_decoder_layers, config.num_query_heads, config.num_kv_heads
  per_group = h // g
  kept_layers = _top(importance.layers, config.prune_num_layers or n)
  groups = config.prune_num_query_heads // per_group if config.prune_num_query_heads else g
  group_scores = importance.heads.reshape(n, g, per_group).sum(-1)
  mlp = config.prune_mlp_dim or config.mlp_dim
  return Plan(
    layers=kept_layers,
    kv_groups=np.stack([_top(group_scores[i], groups) for i in kept_layers]),
    neurons=np.stack([_top(importance.neurons[i], mlp) for i in kept_layers]),
    channels=_top(importance.channels[kept_layers].sum(0), config.prune_emb_dim or config.emb_dim),
    heads_per_group=per_group,
  )


def _query_heads(kv_groups: np.ndarray, per_group: int) -> np.ndarray:
  return (kv_groups[:, None] * per_group + np.arange(per_group)[None, :]).reshape(-1)


def _prune_layer(p: dict, plan: Plan, row: int) -> dict:
  """One kept layer's weights (numpy, our layout) cut to its kept groups, neurons and channels."""
  ch, groups, neurons = plan.channels, plan.kv_groups[row], plan.neurons[row]
  heads = _query_heads(groups, plan.heads_per_group)
  cut = {
    "attn_norm": lambda w: w[ch],
    "mlp_norm": lambda w: w[ch],
    "query": lambda w: w[ch][:, heads],
    "key": lambda w: w[ch][:, groups],
    "value": lambda w: w[ch][:, groups],
    "out": lambda w: w[heads][:, :, ch],
    "query_bias": lambda w: w[heads],
    "key_bias": lambda w: w[groups],
    "value_bias": lambda w: w[groups],
    "q_norm": lambda w: w,
    "k_norm": lambda w: w,
    "wi_gate": lambda w: w[ch][:, neurons],
    "wi_up": lambda w: w[ch][:, neurons],
    "wo": lambda w: w[neurons][:, ch],
  }
  return {name: cut[name](w) for name, w in p.items()}


def apply_plan(params: dict, plan: Plan) -> dict:
  """The pruned parameter dict (numpy arrays in, numpy arrays out)."""
  stacked = {name: np.asarray(w) for name, w in params["layers"].items()}
  per_layer = [_prune_layer({k: w[i] for k, w in stacked.items()}, plan, row) for row, i in enumerate(plan.layers)]
  out = {
    "token_embedder": np.asarray(params["token_embedder"])[:, plan.channels],
    "layers": {name: np.stack([layer[name] for layer in per_layer]) for name in stacked},
    "final_norm": np.asarray(params["final_norm"])[plan.channels],
  }
  if "lm_head" in params:
    out["lm_head"] = np.asarray(params["lm_head"])[plan.channels]
  return out


def pruned_model_keys(config, plan: Plan) -> dict:
  return {
    "num_decoder_layers": len(plan.layers),
    "emb_dim": len(plan.channels),
    "mlp_dim": plan.neurons.shape[1],
    "num_kv_heads": plan.kv_groups.shape[1],
    "num_query_heads": plan.kv_groups.shape[1] * plan.heads_per_group,
  }
