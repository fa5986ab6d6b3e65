"""Cross-entropy numerics and the token-chunked loss: values and gradients against direct references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import max_utils

jax.config.update("jax_enable_x64", False)


def test_cross_entropy_matches_analytic_value():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
  loss, z = max_utils.cross_entropy_with_logits(logits, jnp.array([1]))
  np.testing.assert_allclose(loss, [np.log(4.0)], rtol=1e-6)
  np.testing.assert_allclose(z, [0.0])


def test_z_loss_is_multiplier_times_squared_log_normaliser():
  logits = jnp.array([[1.0, 2.0, 3.0]])
  log_z = np.log(np.exp([1.0, 2.0, 3.0]).sum())
  loss, z = max_utils.cross_entropy_with_logits(logits, jnp.array([2]), z_loss=1e-2)
  np.testing.assert_allclose(z, [1e-2 * log_z**2], rtol=1e-6)
  np.testing.assert_allclose(loss, [log_z - 3.0 + 1e-2 * log_z**2], rtol=1e-6)


def test_cross_entropy_is_finite_for_extreme_and_bf16_logits():
  logits = jnp.array([[1e4, -1e4, 0.0], [-jnp.inf, 0.0, 1.0]])
  loss, _ = max_utils.cross_entropy_with_logits(logits.astype(jnp.bfloat16), jnp.array([0, 2]))
  assert loss.dtype == jnp.float32 and np.isfinite(np.asarray(loss)).all()


def _direct(hidden, w, targets, weights, z_loss):
  loss, z = max_utils.cross_entropy_with_logits(hidden @ w, targets, z_loss)
  return jnp.sum((loss - z) * weights), jnp.sum(z * weights)


@pytest.mark.parametrize("chunk", [7, 16, 64, 1000])
def test_chunked_equals_unchunked_values_and_gradients(chunk):
  rng = np.random.default_rng(0)
  n, d, v = 64, 16, 50
  hidden = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, v)) * 0.3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, n))
  weights = jnp.asarray(rng.random(n) > 0.2, jnp.float32)

  def chunked(h, w):
    sums = max_utils.chunked_sums(
      functools.partial(max_utils.ce_chunk_sums, z_loss=1e-3),
      {"hidden": h, "targets": targets, "weights": weights},
      {"w_DxV": w},
      chunk,
    )
    return sums["ce_sum"] + sums["z_loss_sum"], sums

  def direct(h, w):
    ce, z = _direct(h, w, targets, weights, 1e-3)
    return ce + z

  (value, sums), grads = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(hidden, w)
  ref_value, ref_grads = jax.value_and_grad(direct, argnums=(0, 1))(hidden, w)
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  assert float(sums["tokens"]) == float(weights.sum())
  for g, r in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-5)


def test_chunked_loss_memory_does_not_grow_with_token_count():
  d, v, chunk = 64, 8192, 256

  def temp_bytes(n):
    def f(h, w):
      sums = max_utils.chunked_sums(
        functools.partial(max_utils.ce_chunk_sums, z_loss=0.0),
        {"hidden": h, "targets": jnp.zeros(n, jnp.int32), "weights": jnp.ones(n)},
        {"w_DxV": w},
        chunk,
      )
      return sums["ce_sum"]

    args = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32))
    return jax.jit(jax.grad(f, argnums=(0, 1))).lower(*args).compile().memory_analysis().temp_size_in_bytes

  small, large = temp_bytes(1024), temp_bytes(8192)
  full_logits_large = 8192 * v * 4
  assert large < full_logits_large / 4
  assert large < small * 2  # 8x the tokens, far less than 2x the temp memory (the chunk dominates)
