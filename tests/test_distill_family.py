"""The rest of the distillation family: logit MSE (`kd_divergence=mse`) against float64 definitions, through
the production KD assembly, chunked and unchunked; its config refusals."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import max_utils, pyconfig
from MaxText.distill.kd_loss import KDOptions, kd_chunk_sums
from MaxText.distill.sources import LiveChunk, LiveTeacher, Pruning
from MaxText.losses.divergence_family import Divergence
from MaxText.losses.logit_mse import logit_mse
from MaxText.pyconfig import ConfigError

MSE = Divergence("mse")


def _normal(seed, *shape, scale=2.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def test_logit_mse_on_a_hand_computed_row():
  s, t = jnp.array([[1.0, 2.0, 3.0, 4.0]]), jnp.array([[0.0, 2.0, 5.0, 1.0]])
  np.testing.assert_allclose(logit_mse(s, t), [(1 + 0 + 4 + 9) / 4])
  np.testing.assert_allclose(logit_mse(s, t, jnp.array([[0.0, 1.0, 1.0, 0.0]])), [(0 + 4) / 2])


def _kept_float64(t, mode) -> np.ndarray:
  """The teacher's kept tokens, found independently: its k largest logits, or the smallest set of its most
  probable tokens whose probability reaches p."""
  t = np.asarray(t, np.float64)
  order = np.argsort(-t, axis=-1, kind="stable")
  kept = np.zeros(t.shape, bool)
  rows = np.arange(t.shape[0])[:, None]
  if "top_k" in mode:
    kept[rows, order[:, : mode["top_k"]]] = True
  elif "top_p" in mode:
    p = np.exp(t - t.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    before = np.cumsum(np.take_along_axis(p, order, -1), -1) - np.take_along_axis(p, order, -1)
    kept[rows, order] = before < mode["top_p"]
  else:
    kept[:] = True
  return kept


@pytest.mark.parametrize("mode", [{}, {"top_k": 5}, {"top_p": 0.8}], ids=str)
def test_mse_values_and_gradients_match_float64_on_the_kept_set(mode):
  s, t = _normal(1, 12, 40), _normal(2, 12, 40)
  chunk = LiveChunk(t, jnp.zeros(12, jnp.int32), Pruning(mode.get("top_k", 0), mode.get("top_p", 0.0)), MSE)
  weights = jnp.arange(1.0, 13.0)
  value, grad = jax.value_and_grad(lambda x: jnp.sum(chunk.divergence(x, 1.0)[0] * weights))(s)
  kept = _kept_float64(t, mode)
  with jax.enable_x64(True):
    t64 = np.asarray(t, np.float64)
    reference = lambda x: jnp.sum(jnp.sum(jnp.where(kept, (x - t64) ** 2, 0), -1) / kept.sum(-1) * weights)
    ref_value, ref_grad = jax.value_and_grad(reference)(np.asarray(s, np.float64))
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)
  mass = chunk.divergence(s, 1.0)[1]
  p = np.asarray(jax.nn.softmax(t64), np.float64)
  np.testing.assert_allclose(mass, np.sum(np.where(kept, p, 0), -1), rtol=1e-5)


def test_mse_chunked_assembly_equals_the_unchunked_loss():
  rng = np.random.default_rng(0)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  hidden, t_hidden, w, tw, labels = f(48, 8), f(48, 8), f(8, 30), f(8, 30) * 2, jnp.asarray(rng.integers(0, 30, 48))
  weights = jnp.asarray(rng.integers(0, 2, 48), jnp.float32)
  options = KDOptions(use_hard_labels=False, z_loss=0.0, temperature_is_one=False)
  chunk_fn = functools.partial(kd_chunk_sums, options=options, source=LiveTeacher(None, None, None, kind=MSE))

  def chunked(h, w_, chunk):
    per_token = {"hidden": h, "teacher_hidden": t_hidden, "targets": labels, "weights": weights}
    shared = {"w_DxV": w_, "teacher_w_DxV": tw, "alpha": jnp.float32(0.7), "temperature": jnp.float32(1.0)}
    return max_utils.chunked_sums(chunk_fn, per_token, shared, chunk)["total_loss_sum"]

  def unchunked(h, w_):
    ce = max_utils.cross_entropy_with_logits(h @ w_, labels)[0]
    return jnp.sum((0.3 * ce + 0.7 * jnp.mean((h @ w_ - t_hidden @ tw) ** 2, -1)) * weights)

  ref_value, ref_grads = jax.value_and_grad(unchunked, argnums=(0, 1))(hidden, w)
  for chunk in (7, 48):
    value, grads = jax.value_and_grad(chunked, argnums=(0, 1))(hidden, w, chunk)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"kd_temperature": 2.0}, "kd_temperature: has no effect with kd_divergence=mse"),
    ({"kd_top_k": 8, "kd_use_other_bucket": True}, "kd_use_other_bucket: mse compares logits"),
    ({"kd_offline_data_dir": "cache"}, "kd_divergence: mse needs the teacher's full logits"),
    ({"kd_teachers": [{"parameters_path": "a"}, {"parameters_path": "b"}]}, "kd_divergence: mse compares one teacher"),
  ],
)
def test_mse_refusals(overrides, message):
  with pytest.raises(ConfigError, match=message):
    pyconfig.from_dict({"model_name": "tiny", "use_kd": True, "kd_divergence": "mse", **overrides})


# --- MiniLM-v2 attention relations ---


def _relations_float64(x, segments, heads):
  """log-relations [B, R, L, L] from an explicit loop over the visible (earlier, same-segment) positions."""
  b, length, width = x.shape
  d = width // heads
  xh = jnp.asarray(x, jnp.float64).reshape(b, length, heads, d).transpose(0, 2, 1, 3)
  visible = np.zeros((b, length, length), bool)
  for row in range(b):
    for i in range(length):
      for j in range(i + 1):
        visible[row, i, j] = segments[row, i] == segments[row, j]
  scores = jnp.einsum("brid,brjd->brij", xh, xh) / np.sqrt(d)
  return jax.nn.log_softmax(jnp.where(visible[:, None], scores, -jnp.inf), axis=-1), visible


def _relation_kl_float64(s, t, segments, heads):
  log_s, visible = _relations_float64(s, segments, heads)
  log_t, _ = _relations_float64(t, segments, heads)
  terms = jnp.where(visible[:, None], jnp.exp(log_t) * (log_t - jnp.where(visible[:, None], log_s, 0.0)), 0.0)
  return jnp.mean(jnp.sum(terms, -1), axis=1)


SEGMENTS = np.array([[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2, 0, 0]])  # packed rows, the second padded


@pytest.mark.parametrize("chunk", [0, 2, 4])
def test_relation_kl_values_and_gradients_match_float64_across_widths(chunk):
  from MaxText.losses.attention_relations import relation_kl

  student, teacher = _normal(3, 2, 8, 12, scale=1.0), _normal(4, 2, 8, 18, scale=1.5)  # widths 12 and 18, 3 heads
  weights = jnp.asarray(SEGMENTS != 0, jnp.float32)
  loss = lambda s: jnp.sum(relation_kl(s, teacher, jnp.asarray(SEGMENTS), 3, chunk) * weights)
  value, grad = jax.value_and_grad(loss)(student)
  with jax.enable_x64(True):
    reference = lambda s: jnp.sum(_relation_kl_float64(s, np.asarray(teacher, np.float64), SEGMENTS, 3) * weights)
    ref_value, ref_grad = jax.value_and_grad(reference)(np.asarray(student, np.float64))
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_relation_kl_is_zero_for_the_same_relations_and_the_first_token_of_a_segment():
  from MaxText.losses.attention_relations import relation_kl

  x = _normal(5, 2, 8, 12)
  same = relation_kl(x, x, jnp.asarray(SEGMENTS), 3)
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  other = relation_kl(x, _normal(6, 2, 8, 12), jnp.asarray(SEGMENTS), 3)
  firsts = np.asarray(other)[[0, 0, 1, 1], [0, 5, 0, 3]]  # a segment's first token sees only itself
  np.testing.assert_allclose(firsts, 0.0, atol=1e-6)
  assert float(jnp.min(jnp.asarray(other)[SEGMENTS != 0].reshape(-1)[1:])) >= 0.0


# --- hidden states and relations through the decoder and the training objective ---


def _tiny(**overrides):
  return pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "max_target_length": 8, **overrides})


def _batch(rng):
  tokens = jnp.asarray(rng.integers(0, 320, (2, 8)), jnp.int32)
  segments = jnp.asarray(SEGMENTS, jnp.int32)
  positions = jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 0, 1, 2, 0, 0]], jnp.int32)
  return {
    "inputs": tokens,
    "inputs_position": positions,
    "inputs_segmentation": segments,
    "targets": jnp.roll(tokens, -1, axis=1),
    "targets_segmentation": segments,
  }


@pytest.mark.parametrize("kind", ["residual", "qkv"])
def test_decoder_features_scanned_and_looped_agree(kind):
  import dataclasses

  from flax import nnx

  from MaxText.model import decoder as model_lib
  from MaxText.model.layers import rms_norm

  config = _tiny()
  _, params, _ = model_lib.split_params(model_lib.Decoder(config, nnx.Rngs(0)))
  batch = _batch(np.random.default_rng(0))
  outs = []
  for scan in (True, False):
    variant = model_lib.abstract_model(dataclasses.replace(config, scan_layers=scan))
    model = model_lib.bind(nnx.graphdef(variant), params)
    outs.append(model_lib.run_on_batch(model, batch, kind))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), outs[0].features, outs[1].features)
  feats = outs[0].features
  if kind == "residual":  # the embedding output first, the last layer's output last
    assert feats.shape == (3, 2, 8, 32)
    np.testing.assert_allclose(feats[0], params["token_embedder"][batch["inputs"]], rtol=1e-6)
    np.testing.assert_allclose(rms_norm(feats[-1], params["final_norm"], 1e-5), outs[0].hidden_BxLxD, rtol=1e-5)
  else:
    assert [f.shape for f in feats] == [(2, 2, 8, 32), (2, 2, 8, 16), (2, 2, 8, 16)]


SOURCES = {
  "residual": {"kd_feature_source": "residual", "kd_layer_indices": "embedding,1", "kd_feature_loss_type": "l2"},
  "attention_relations": {"kd_feature_source": "attention_relations", "kd_relation_query_chunk": 4},
}


@pytest.mark.parametrize("source", SOURCES)
def test_feature_sources_vanish_in_self_distillation_and_train_toward_a_teacher(source):
  import optax
  from flax import nnx

  from MaxText.distill import feature_head
  from MaxText.distill.objective import make_loss_fn
  from MaxText.model import decoder as model_lib

  keys = {"kd_feature_projection": source != "residual", **SOURCES[source]}
  config = _tiny(use_kd=True, kd_alpha=0.0, kd_beta=1.0, init_std=0.3, **keys)
  alignment = pyconfig.feature_alignment(config)
  graphdef, student, _ = model_lib.split_params(model_lib.Decoder(config, nnx.Rngs(0)))
  teacher = model_lib.split_params(model_lib.Decoder(config, nnx.Rngs(1)))[1]
  loss_fn = jax.jit(make_loss_fn(config, graphdef, LiveTeacher(config, graphdef, None), alignment), static_argnums=())
  batch = _batch(np.random.default_rng(1))
  trainables = {"params": student}
  feature = lambda t, teacher_params: loss_fn(t, batch, 0, teacher_params)[1]["kd/feature_loss_sum"]
  np.testing.assert_allclose(feature(trainables, student), 0.0, atol=1e-5)
  tx = optax.adam(3e-3)
  opt = tx.init(trainables)
  start = float(feature(trainables, teacher))
  grad_fn = jax.jit(jax.grad(lambda t: loss_fn(t, batch, 0, teacher)[0]))
  for _ in range(30):
    updates, opt = tx.update(grad_fn(trainables), opt)
    trainables = optax.apply_updates(trainables, updates)
  end = float(feature(trainables, teacher))
  assert start > 0.05 and end < 0.7 * start, (start, end)
  assert alignment.projection_shape is None and feature_head.decoder_features(alignment) in ("residual", "qkv")


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"kd_layer_indices": "embedding,1"}, "kd_layer_indices: expected comma-separated layer numbers, got"),
    ({"kd_feature_source": "residual", "kd_layer_indices": "-2"}, "kd_layer_indices: layer -2 is out of range"),
    ({"kd_relation_heads": 2}, "kd_relation_heads: has no effect with kd_feature_source=attention_output"),
    ({"kd_feature_source": "attention_relations", "kd_feature_loss_type": "l2"}, "kd_feature_loss_type: has no"),
    ({"kd_feature_source": "attention_relations", "kd_relation_heads": 3}, "kd_relation_heads: 3 relation heads do"),
    ({"kd_feature_source": "attention_relations", "kd_relation_query_chunk": 3}, "kd_relation_query_chunk: expec"),
  ],
)
def test_feature_source_refusals(overrides, message):
  with pytest.raises(ConfigError, match=message):
    _tiny(use_kd=True, kd_beta=1.0, **overrides)
