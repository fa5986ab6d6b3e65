"""Decoder invariants: scan == loop, remat and MLP pieces change nothing, causality, packed segments are
isolated."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from MaxText import pyconfig
from MaxText.model import decoder as model_lib
from MaxText.model import layers


def _model(**overrides):
  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", **overrides})
  return config, model_lib.split_params(model_lib.Decoder(config, nnx.Rngs(0)))


def _logits_and_grads(config, params, tokens):
  graphdef = nnx.graphdef(model_lib.abstract_model(config))  # the graphdef carries the config variant

  def loss(p):
    logits = model_lib.bind(graphdef, p).logits(tokens)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 5]), logits

  (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return logits, grads


TOKENS = np.random.default_rng(0).integers(0, 320, size=(2, 24))


@pytest.mark.parametrize(
  "variant",
  [
    {"scan_layers": False},
    {"remat_policy": "none"},
    {"remat_policy": "full"},
    {"remat_policy": "save_dots"},
    {"scan_layers": False, "remat_policy": "none"},
    {"mlp_sequence_chunks": 4},  # the MLP over 4 pieces of the 24 tokens
    {"mlp_sequence_chunks": 5, "scan_layers": False},  # 5 does not divide 24: runs whole
  ],
)
def test_scan_loop_and_remat_give_equal_logits_and_gradients(variant):
  config, (_, params, _) = _model()
  ref_logits, ref_grads = _logits_and_grads(config, params, TOKENS)
  other = dataclasses.replace(config, **variant)
  logits, grads = _logits_and_grads(other, params, TOKENS)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-6, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-5), grads, ref_grads)


def test_the_auto_mlp_default_is_the_whole_mlp_program_at_short_lengths():
  """mlp_sequence_chunks=0 (auto) changes nothing up to 2048 tokens: the very program of the MLP run whole,
  so the CPU step at the main job's 256 tokens is the one it was (pieces start at 2049: test_train_compile)."""
  config, (_, params, _) = _model(remat_policy="full")
  variants = [dataclasses.replace(config, mlp_sequence_chunks=n) for n in (0, 1)]
  lowered = [jax.jit(lambda p, c=c: _logits_and_grads(c, p, TOKENS)).lower(params).as_text() for c in variants]
  assert config.mlp_sequence_chunks == 0 and lowered[0] == lowered[1]


def test_causality_changing_a_future_token_changes_no_earlier_logit():
  config, (graphdef, params, _) = _model()
  model = model_lib.bind(graphdef, params)
  changed = TOKENS.copy()
  changed[:, 15] = (changed[:, 15] + 7) % 320
  before, after = np.asarray(model.logits(TOKENS)), np.asarray(model.logits(changed))
  np.testing.assert_array_equal(before[:, :15], after[:, :15])
  assert np.abs(before[:, 15:] - after[:, 15:]).max() > 1e-4


def test_packed_segments_do_not_see_each_other():
  config, (graphdef, params, _) = _model()
  model = model_lib.bind(graphdef, params)
  a, b = TOKENS[0, :10], TOKENS[1, :14]
  packed = np.concatenate([a, b])[None]
  segments = np.array([[1] * 10 + [2] * 14])
  positions = np.array([list(range(10)) + list(range(14))])
  packed_logits = np.asarray(model.logits(packed, positions, segments))
  alone_a = np.asarray(model.logits(a[None]))
  alone_b = np.asarray(model.logits(b[None]))
  np.testing.assert_allclose(packed_logits[0, :10], alone_a[0], atol=1e-5)
  np.testing.assert_allclose(packed_logits[0, 10:], alone_b[0], atol=1e-5)


def test_gqa_and_qk_norm_and_tied_variants_run_and_differ():
  tokens = TOKENS[:, :8]
  outs = []
  for overrides in ({}, {"use_qk_norm": True}, {"logits_via_embedding": True}):
    config, (graphdef, params, _) = _model(**overrides)
    logits = np.asarray(model_lib.bind(graphdef, params).logits(tokens))
    assert logits.shape == (2, 8, 320) and np.isfinite(logits).all()
    outs.append(logits)
  assert np.abs(outs[0] - outs[2]).max() > 1e-3


def test_bf16_compute_keeps_fp32_master_weights_and_fp32_logits():
  config, (graphdef, params, _) = _model(dtype="bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  out = model_lib.bind(graphdef, params)(TOKENS)
  assert out.hidden_BxLxD.dtype == jnp.bfloat16
  assert model_lib.bind(graphdef, params).logits(TOKENS).dtype == jnp.float32


def test_the_cpu_swiglu_backward_is_autodiffs():
  """layers.swiglu_cpu's hand-written backward (the weight gradients' products laid out for XLA:CPU) gives
  autodiff's gradients of the plain SwiGLU, for both outputs' cotangents (the F activations feed feature KD)."""
  keys = jax.random.split(jax.random.key(0), 6)
  h = jax.random.normal(keys[0], (2, 5, 8))
  weights = [jax.random.normal(k, s) / 3 for k, s in zip(keys[1:4], [(8, 12), (8, 12), (12, 8)], strict=True)]
  cotangents = (jax.random.normal(keys[4], (2, 5, 12)), jax.random.normal(keys[5], (2, 5, 8)))
  outputs, pullback = jax.vjp(layers.swiglu_cpu, h, *weights)
  ref_outputs, ref_pullback = jax.vjp(layers._swiglu, h, *weights)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), outputs, ref_outputs)
  for got, want in zip(pullback(cotangents), ref_pullback(cotangents), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("remat_policy", ["none", "full", "save_dots"])
def test_the_cpu_mlp_path_gives_the_plain_models_gradients(remat_policy, monkeypatch):
  """The whole model's gradients with the CPU SwiGLU equal those of the plain einsums (taken on other
  platforms), under every remat policy."""
  config, (_, params, _) = _model(remat_policy=remat_policy)
  logits, grads = _logits_and_grads(config, params, TOKENS)
  monkeypatch.setattr(layers, "target_platform", lambda: "tpu")
  ref_logits, ref_grads = _logits_and_grads(config, params, TOKENS)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-6, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-5), grads, ref_grads)
