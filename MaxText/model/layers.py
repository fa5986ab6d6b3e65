"""Pure functions of the Llama-family decoder layer: RMSNorm, RoPE, SwiGLU; the kernels are in attention.py.

They take plain arrays so that the scanned and the looped decoder run the very same code.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from MaxText.model.attention import attend
from MaxText.parallel.sharding import constrain, target_platform


def rms_norm(x_BxLxD: jax.Array, scale_D: jax.Array, eps: float) -> jax.Array:
  """RMSNorm computed in float32, returned in the input dtype (as Hugging Face Llama does)."""
  x32 = x_BxLxD.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (scale_D.astype(jnp.float32) * normed).astype(x_BxLxD.dtype)


def rope_inverse_frequencies(config) -> jax.Array:
  """RoPE inverse frequencies, with the Llama-3 long-context scaling when `rope_scaling_factor` > 0."""
  dim = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  factor = config.rope_scaling_factor
  if not factor:
    return inv_freq
  old_len = config.rope_original_max_position
  low_wavelen = old_len / config.rope_low_freq_factor
  high_wavelen = old_len / config.rope_high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - config.rope_low_freq_factor) / (
    config.rope_high_freq_factor - config.rope_low_freq_factor
  )
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x_BxLxHxK: jax.Array, positions_BxL: jax.Array, inv_freq_K2: jax.Array) -> jax.Array:
  """Rotary embedding in the half-split layout of Hugging Face Llama (rotate_half)."""
  angles_BxLxK2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_K2
  cos = jnp.cos(angles_BxLxK2)[:, :, None, :]
  sin = jnp.sin(angles_BxLxK2)[:, :, None, :]
  x32 = x_BxLxHxK.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxLxHxK.dtype)


def qkv_projections(p: dict, h_BxLxD, config):
  """Queries [B, L, H, K], keys and values [B, L, G, K] of the normed input before RoPE: biases, QK-norm."""
  dtype = h_BxLxD.dtype
  eps = config.normalization_layer_epsilon
  q = jnp.einsum("bld,dhk->blhk", h_BxLxD, p["query"].astype(dtype))
  k = jnp.einsum("bld,dhk->blhk", h_BxLxD, p["key"].astype(dtype))
  v = jnp.einsum("bld,dhk->blhk", h_BxLxD, p["value"].astype(dtype))
  if config.use_qkv_bias:
    q, k, v = q + p["query_bias"].astype(dtype), k + p["key_bias"].astype(dtype), v + p["value_bias"].astype(dtype)
  if config.use_qk_norm:
    q = rms_norm(q, p["q_norm"], eps)
    k = rms_norm(k, p["k_norm"], eps)
  return q, k, v


def project_qkv(p: dict, h_BxLxD, positions_BxL, inv_freq, config):
  """Queries [B, L, H, K], keys and values [B, L, G, K] of the normed input: biases, QK-norm, RoPE."""
  q, k, v = qkv_projections(p, h_BxLxD, config)
  return apply_rope(q, positions_BxL, inv_freq), apply_rope(k, positions_BxL, inv_freq), v


def _attention(p: dict, x_BxLxD, positions_BxL, segment_ids_BxL, inv_freq, config):
  """(normed input, pre-RoPE (q, k, v), per-head attention output, projected output) of one layer."""
  h = rms_norm(x_BxLxD, p["attn_norm"], config.normalization_layer_epsilon)
  q, k, v = qkv_projections(p, h, config)
  q_roped, k_roped = apply_rope(q, positions_BxL, inv_freq), apply_rope(k, positions_BxL, inv_freq)
  attended_BxLxHxK = attend(q_roped, k_roped, v, segment_ids_BxL, config.attention, config.max_segments_per_seq)
  out_BxLxD = jnp.einsum("blhk,hkd->bld", attended_BxLxHxK, p["out"].astype(x_BxLxD.dtype))
  return h, (q, k, v), attended_BxLxHxK, out_BxLxD


def attention_block(p: dict, x_BxLxD, positions_BxL, segment_ids_BxL, inv_freq, config):
  """Pre-norm attention of one layer: (normed input, per-head attention output, projected output)."""
  h, _, attended_BxLxHxK, out_BxLxD = _attention(p, x_BxLxD, positions_BxL, segment_ids_BxL, inv_freq, config)
  return h, attended_BxLxHxK, out_BxLxD


def mlp_block(p: dict, x_BxLxD, config):
  """Pre-norm SwiGLU of one layer: (normed input, the F activations fed to `wo`, projected output)."""
  dtype = x_BxLxD.dtype
  h = rms_norm(x_BxLxD, p["mlp_norm"], config.normalization_layer_epsilon)
  weights = (p["wi_gate"].astype(dtype), p["wi_up"].astype(dtype), p["wo"].astype(dtype))
  swiglu = swiglu_cpu if target_platform() == "cpu" else _swiglu
  hidden_BxLxF, out_BxLxD = swiglu(h, *weights)
  return h, hidden_BxLxF, out_BxLxD


def _swiglu(h_BxLxD, w_gate_DxF, w_up_DxF, w_out_FxD):
  """(silu(h W_gate) * (h W_up), that times W_out)."""
  gate_BxLxF = jnp.einsum("bld,df->blf", h_BxLxD, w_gate_DxF)
  up_BxLxF = jnp.einsum("bld,df->blf", h_BxLxD, w_up_DxF)
  hidden_BxLxF = jax.nn.silu(gate_BxLxF) * up_BxLxF
  return hidden_BxLxF, jnp.einsum("blf,fd->bld", hidden_BxLxF, w_out_FxD)


@jax.custom_vjp
def swiglu_cpu(h_BxLxD, w_gate_DxF, w_up_DxF, w_out_FxD):
  """`_swiglu` with its backward written out, for XLA:CPU.

  Why: a weight gradient is a product over the tokens, which XLA:CPU's matmul wants transposed. From
  autodiff's backward, XLA fuses the SwiGLU's elementwise gradient into that transposing copy, a loop that
  reads the scan's saved activations in strides: 15% of the main job's CE step, against 1% here, where
  the transposed operands are the normed input (shared by both input products) and the F activations
  (benchmarks/step_profile.py). The same products and elementwise formulas as autodiff (the elementwise
  part is autodiff's own); tests/test_model.py compares the gradients. Other platforms keep autodiff's.
  """
  return _swiglu(h_BxLxD, w_gate_DxF, w_up_DxF, w_out_FxD)


def _swiglu_cpu_forward(h_BxLxD, w_gate_DxF, w_up_DxF, w_out_FxD):
  gate_BxLxF = jnp.einsum("bld,df->blf", h_BxLxD, w_gate_DxF)
  up_BxLxF = jnp.einsum("bld,df->blf", h_BxLxD, w_up_DxF)
  hidden_BxLxF = jax.nn.silu(gate_BxLxF) * up_BxLxF
  out_BxLxD = jnp.einsum("blf,fd->bld", hidden_BxLxF, w_out_FxD)
  return (hidden_BxLxF, out_BxLxD), (h_BxLxD, gate_BxLxF, up_BxLxF, w_gate_DxF, w_up_DxF, w_out_FxD)


def _swiglu_cpu_backward(residuals, cotangents):
  h_BxLxD, gate_BxLxF, up_BxLxF, w_gate_DxF, w_up_DxF, w_out_FxD = residuals
  d_hidden_BxLxF, d_out_BxLxD = cotangents  # d_hidden: from feature KD's use of the F activations, else zeros
  tokens = h_BxLxD.shape[0] * h_BxLxD.shape[1]
  h_NxD, d_out_NxD = h_BxLxD.reshape(tokens, -1), d_out_BxLxD.reshape(tokens, -1)
  hidden_NxF, pullback = jax.vjp(
    lambda g, u: jax.nn.silu(g) * u, *(a.reshape(tokens, -1) for a in (gate_BxLxF, up_BxLxF))
  )
  d_hidden_NxF = d_out_NxD @ w_out_FxD.T + d_hidden_BxLxF.reshape(tokens, -1)
  d_gate_NxF, d_up_NxF = pullback(d_hidden_NxF)
  h_DxN = h_NxD.T
  d_h_NxD = d_gate_NxF @ w_gate_DxF.T + d_up_NxF @ w_up_DxF.T
  return d_h_NxD.reshape(h_BxLxD.shape), h_DxN @ d_gate_NxF, h_DxN @ d_up_NxF, hidden_NxF.T @ d_out_NxD


swiglu_cpu.defvjp(_swiglu_cpu_forward, _swiglu_cpu_backward)


AUTO_MLP_PIECE_TOKENS = 2048  # mlp_sequence_chunks=0: pieces of at most this many tokens of the sequence


def mlp_pieces(setting: int, length: int) -> int:
  """How many pieces `mlp_sequence_chunks` cuts a sequence of `length` into; 0 = auto: the fewest pieces
  of at most AUTO_MLP_PIECE_TOKENS that divide the length (1 up to 2048 tokens, 4 at 8192), which keeps
  llama3.1-8b at 4 x 8192 within upstream MaxText's memory and changes nothing at short lengths."""
  if setting:
    return setting
  pieces = -(-length // AUTO_MLP_PIECE_TOKENS)
  while length % pieces:
    pieces += 1
  return pieces


def mlp_output(p: dict, x_BxLxD, config):
  """The MLP block's projected output, over `mlp_sequence_chunks` pieces of the sequence one at a time.

  Each piece's [B, L/n, F] activations (gate, up, their product and, in the backward pass, their
  gradients: F is 3.5x D on Llama) are the only ones alive, each piece recomputed from its input in
  the backward pass. Exact: the MLP acts on each token alone. A length the count does not divide
  runs whole.
  """
  batch, length, width = x_BxLxD.shape
  pieces = mlp_pieces(config.mlp_sequence_chunks, length)
  if pieces <= 1 or length % pieces:
    return mlp_block(p, x_BxLxD, config)[2]
  # [B, n, L/n, D] -> [n, B, L/n, D]: every piece keeps the batch axis, so it spans the same devices
  x_NxBxPxD = jnp.moveaxis(x_BxLxD.reshape(batch, pieces, length // pieces, width), 1, 0)
  piece_output = jax.checkpoint(lambda x: mlp_block(p, x, config)[2], policy=jax.checkpoint_policies.nothing_saveable)
  out_NxBxPxD = jax.lax.map(piece_output, x_NxBxPxD)
  return jnp.moveaxis(out_NxBxPxD, 0, 1).reshape(batch, length, width)


FEATURES = ("attention_output", "residual", "qkv")  # what a layer can hand the feature-KD term


def decoder_layer(p: dict, x_BxLxD, positions_BxL, segment_ids_BxL, inv_freq, config, feature: str | None = None):
  """One pre-norm Llama layer on the weights `p` of that layer. Returns (output, `feature` of the layer or None):
  attention_output (after its projection, before the residual add), residual (the layer's output) or qkv
  (the pre-RoPE query, key and value projections, heads concatenated: [B, L, H*K], [B, L, G*K] twice)."""
  _, qkv, _, attn_out_BxLxD = _attention(p, x_BxLxD, positions_BxL, segment_ids_BxL, inv_freq, config)
  x_BxLxD = constrain(x_BxLxD + attn_out_BxLxD, ("batch", "activation_length", "activation_embed"))
  mlp_out_BxLxD = mlp_output(p, x_BxLxD, config)
  x_BxLxD = constrain(x_BxLxD + mlp_out_BxLxD, ("batch", "activation_length", "activation_embed"))
  if feature == "qkv":
    return x_BxLxD, tuple(a.reshape(*a.shape[:2], -1) for a in qkv)
  return x_BxLxD, {"attention_output": attn_out_BxLxD, "residual": x_BxLxD, None: None}[feature]
