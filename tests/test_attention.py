"""Attention kernels: flash and the CPU's short causal kernel equal dot_product (values and gradients;
packing, GQA, any length), flash on the CPU takes the short kernel up to one flash tile, the model runs
either, the config names its kernels, and flash's memory does not grow with L^2 (the
platform kernels splash and cudnn: test_attention_kernels.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from MaxText import pyconfig
from MaxText.model import attention, cpu_attention, decoder
from MaxText.pyconfig import ConfigError

TOL = 1e-5


def _problem(length=48, heads=4, kv_heads=2, dim=8, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(2, length, heads, dim)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(2, length, kv_heads, dim)), dtype) for _ in range(2))
  # several documents per row, different per row, and trailing padding (segment 0)
  cuts = [[0.2, 0.6, 0.95], [0.5, 0.7, 0.9]]
  segments = np.zeros((2, length), np.int32)
  for row, fractions in enumerate(cuts):
    bounds = [0, *(int(f * length) for f in fractions)]
    for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True), start=1):
      segments[row, a:b] = s
  weights = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  return q, k, v, jnp.asarray(segments), weights


def _value_and_grads(kernel, q, k, v, segments, weights):
  loss = lambda q, k, v: jnp.sum(kernel(q, k, v, segments).astype(jnp.float32) * weights)
  return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize(
  "length, heads, kv_heads, block",
  [(48, 4, 2, 16), (48, 4, 2, 7), (48, 4, 4, 48), (50, 6, 1, 16), (33, 4, 2, 512)],
  ids=["gqa-even-blocks", "gqa-ragged-blocks", "mha-one-block", "mqa-padded", "short-one-block"],
)
def test_flash_matches_dot_product_values_and_gradients_in_float32(length, heads, kv_heads, block):
  q, k, v, segments, weights = _problem(length, heads, kv_heads)
  want_out = attention.dot_product_attention(q, k, v, segments)
  got_out = attention.flash_attention(q, k, v, segments, block)
  np.testing.assert_allclose(got_out, want_out, rtol=TOL, atol=TOL)
  want = _value_and_grads(attention.dot_product_attention, q, k, v, segments, weights)
  got = _value_and_grads(lambda *a: attention.flash_attention(*a, block=block), q, k, v, segments, weights)
  np.testing.assert_allclose(got[0], want[0], rtol=TOL)
  for g, w in zip(got[1], want[1], strict=True):
    np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL)


def test_flash_in_bfloat16_is_as_accurate_as_dot_product_in_bfloat16():
  # Against the float32 result, the bf16 flash output errs no more than 1.5x bf16 dot_product's, and its
  # gradients no more than 2x: flash's backward rounds dS to bf16 before its matmuls (as FlashAttention
  # does, to keep them on bf16 units), where dot_product's autodiff rounds only the probabilities.
  # Absolute bound: 0.05 on outputs and gradients of unit scale (bf16 keeps 8 bits).
  q, k, v, segments, weights = _problem()
  exact = _value_and_grads(attention.dot_product_attention, q, k, v, segments, weights)
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  dense = _value_and_grads(attention.dot_product_attention, *low, segments, weights)
  flash = _value_and_grads(lambda *a: attention.flash_attention(*a, block=16), *low, segments, weights)
  outputs = [attention.dot_product_attention(q, k, v, segments)]
  outputs += [kernel(*low, segments) for kernel in (attention.dot_product_attention, attention.flash_attention)]
  error = lambda x, ref: float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(ref, np.float32))))
  assert error(outputs[2], outputs[0]) <= 1.5 * error(outputs[1], outputs[0])
  assert error(outputs[2], outputs[0]) < 0.05
  for got, base, ref in zip(flash[1], dense[1], exact[1], strict=True):
    assert error(got, ref) <= 2.0 * error(base, ref) and error(got, ref) < 0.05, (error(got, ref), error(base, ref))


@pytest.mark.parametrize(
  "length, heads, kv_heads, rows",
  [(48, 4, 2, 16), (50, 6, 1, 7), (20, 4, 4, 32)],
  ids=["gqa-3-blocks", "mqa-padded-ragged-blocks", "mha-shorter-than-a-block"],
)
def test_short_causal_attention_matches_dot_product_values_and_gradients_in_float32(length, heads, kv_heads, rows):
  q, k, v, segments, weights = _problem(length, heads, kv_heads)
  kernel = lambda *a: cpu_attention.short_causal_attention(*a, rows=rows)
  np.testing.assert_allclose(
    kernel(q, k, v, segments), attention.dot_product_attention(q, k, v, segments), rtol=TOL, atol=TOL
  )
  want = _value_and_grads(attention.dot_product_attention, q, k, v, segments, weights)
  got = _value_and_grads(kernel, q, k, v, segments, weights)
  np.testing.assert_allclose(got[0], want[0], rtol=TOL)
  for g, w in zip(got[1], want[1], strict=True):
    np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL)


def test_short_causal_attention_in_bfloat16_is_as_accurate_as_dot_product_in_bfloat16():
  # flash's bounds (above).
  q, k, v, segments, weights = _problem()
  kernel = lambda *a: cpu_attention.short_causal_attention(*a, rows=16)
  exact = _value_and_grads(attention.dot_product_attention, q, k, v, segments, weights)
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  dense = _value_and_grads(attention.dot_product_attention, *low, segments, weights)
  short = _value_and_grads(kernel, *low, segments, weights)
  error = lambda x, ref: float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(ref, np.float32))))
  reference = attention.dot_product_attention(q, k, v, segments)
  assert error(kernel(*low, segments), reference) <= 1.5 * error(
    attention.dot_product_attention(*low, segments), reference
  )
  for got, base, ref in zip(short[1], dense[1], exact[1], strict=True):
    assert error(got, ref) <= 2.0 * error(base, ref) and error(got, ref) < 0.05, (error(got, ref), error(base, ref))


def test_flash_on_the_cpu_runs_the_short_kernel_up_to_one_flash_tile_and_blockwise_flash_beyond():
  q, k, v, segments, _ = _problem(length=40)
  np.testing.assert_array_equal(
    attention.attend(q, k, v, segments, "flash"), cpu_attention.short_causal_attention(q, k, v, segments)
  )
  traced = lambda length: str(jax.make_jaxpr(lambda *a: attention.attend(*a, "flash"))(*_problem(length)[:4]))
  assert "_prefix" in traced(attention.FLASH_BLOCK) and "_prefix" not in traced(attention.FLASH_BLOCK + 1)


def test_tokens_never_attend_across_documents_or_to_the_future():
  q, k, v, segments, _ = _problem()
  out = attention.flash_attention(q, k, v, segments, 16)
  # changing a later document and the future of a token leaves the token's output as it was
  row, token = 0, int(np.argmax(np.asarray(segments[0]) == 2)) + 2  # inside document 2 of row 0
  k2 = k.at[row, token + 1 :].set(7.0).at[row, : int(np.argmax(np.asarray(segments[0]) == 2))].set(-7.0)
  v2 = v.at[row, token + 1 :].set(3.0)
  out2 = attention.flash_attention(q, k2, v2, segments, 16)
  np.testing.assert_allclose(out2[row, token], out[row, token], rtol=1e-6, atol=1e-6)


def _model_loss_and_grads(kernel: str):
  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "attention": kernel, "num_kv_heads": 2})
  _, params, _ = decoder.split_params(decoder.Decoder(config, nnx.Rngs(0)))
  graphdef = nnx.graphdef(decoder.abstract_model(config))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 320, (2, 40)))
  segments = jnp.asarray([[1] * 15 + [2] * 25, [1] * 30 + [2] * 8 + [0] * 2])
  positions = jnp.asarray(np.concatenate([np.arange(15), np.arange(25)])[None].repeat(2, 0))

  def loss(p):
    return jnp.mean(decoder.bind(graphdef, p).logits(tokens, positions, segments) ** 2)

  return jax.value_and_grad(loss)(params)


def test_the_model_gives_the_same_loss_and_gradients_with_either_kernel():
  (dense_loss, dense_grads), (flash_loss, flash_grads) = (_model_loss_and_grads(k) for k in ("dot_product", "flash"))
  np.testing.assert_allclose(flash_loss, dense_loss, rtol=TOL)
  for g, w in zip(jax.tree.leaves(flash_grads), jax.tree.leaves(dense_grads), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=TOL)


def test_autoselect_is_flash_on_cpu_and_an_unknown_kernel_is_refused_by_name():
  assert attention.select_kernel("autoselect", "cpu") == "flash"  # the other platforms: test_attention_kernels.py
  with pytest.raises(
    ConfigError, match="attention: expected one of autoselect, dot_product, flash, splash, cudnn, got 'triton'"
  ):
    pyconfig.from_dict({"attention": "triton"})
  config = pyconfig.from_dict({"model_name": "tiny", "attention": "flash"})
  assert decoder.abstract_model(config).config.attention == "flash"  # the decoder's view carries the kernel
  assert dataclasses.replace(config, attention="dot_product").attention == "dot_product"


def test_flash_temporaries_stay_flat_while_dot_product_grows_with_length_squared():
  def temp_mib(kernel, length):
    q, k, v, segments, weights = _problem(length, heads=4, kv_heads=2, dim=16)
    step = jax.jit(lambda q, k, v: _value_and_grads(kernel, q, k, v, segments, weights))
    return step.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes / 2**20

  dense = [temp_mib(attention.dot_product_attention, n) for n in (1024, 2048)]
  flash = [temp_mib(attention.flash_attention, n) for n in (1024, 2048)]
  assert dense[1] > 3.5 * dense[0]  # the L x L scores: 4x per doubling
  assert flash[1] < 2.5 * flash[0] and flash[1] < dense[1] / 4
