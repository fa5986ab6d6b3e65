"""The divergence family (`kd_divergence`): analytic values, limits, float64 references for every pruning
mode, chunking, extreme inputs, offline k = vocab against online."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import max_utils, pyconfig
from MaxText.distill.cached_source import CachedTopKTeacher
from MaxText.distill.kd_loss import KDOptions, kd_chunk_sums
from MaxText.distill.sources import LiveTeacher, Pruning
from MaxText.losses import targets
from MaxText.losses.divergence_family import Divergence, divergence

FAMILY = [
  Divergence("reverse_kl"),
  Divergence("jsd", 0.5),
  Divergence("jsd", 0.1),
  Divergence("tvd"),
  Divergence("skew_forward_kl", 0.1),
  Divergence("skew_reverse_kl", 0.3),
]
ALL = [Divergence("forward_kl"), *FAMILY]
MODES = [
  {},
  {"top_k": 5},
  {"top_k": 5, "use_other_bucket": True},
  {"top_p": 0.8},
  {"top_p": 0.8, "use_other_bucket": True},
]
ID = lambda d: f"{d.name}{d.param or ''}"


def _logits(seed, shape=(12, 40), scale=2.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _value(student, teacher, temperature, div, **mode):
  top_k, top_p, other = mode.get("top_k"), mode.get("top_p"), mode.get("use_other_bucket", False)
  return divergence(student, targets.teacher_target(teacher, temperature, top_k, top_p, other), temperature, div)


# --- a direct float64 implementation of the definitions, over explicit outcome distributions ---


def _xlogy_ratio(a, b):
  has = a > 0  # 0 log 0 = 0, with no NaN from the unused branch's gradient
  return jnp.where(has, a * (jnp.log(jnp.where(has, a, 1.0)) - jnp.log(jnp.where(has, b, 1.0))), 0.0)


def _reference_value(name, param, p, q):
  if name == "forward_kl":
    return jnp.sum(_xlogy_ratio(p, q), -1)
  if name == "reverse_kl":
    return jnp.sum(_xlogy_ratio(q, p), -1)
  if name == "tvd":
    return 0.5 * jnp.sum(jnp.abs(p - q), -1)
  if name == "jsd":
    m = param * p + (1 - param) * q
    return param * jnp.sum(_xlogy_ratio(p, m), -1) + (1 - param) * jnp.sum(_xlogy_ratio(q, m), -1)
  if name == "skew_forward_kl":
    return jnp.sum(_xlogy_ratio(p, param * p + (1 - param) * q), -1)
  return jnp.sum(_xlogy_ratio(q, param * q + (1 - param) * p), -1)


def _reference(div, s, t, temperature, kept, other):
  """Outcomes: the vocabulary; the kept tokens + one OTHER bucket; or the kept tokens renormalised."""
  p, q = jax.nn.softmax(t / temperature), jax.nn.softmax(s / temperature)
  if kept is None:
    return _reference_value(div.name, div.param, p, q)
  if other:
    bucket = lambda x: jnp.concatenate([jnp.where(kept, x, 0), jnp.sum(jnp.where(kept, 0, x), -1, keepdims=True)], -1)
    return _reference_value(div.name, div.param, bucket(p), bucket(q))
  renorm = lambda x: jnp.where(kept, x, 0) / jnp.sum(jnp.where(kept, x, 0), -1, keepdims=True)
  return _reference_value(div.name, div.param, renorm(p), renorm(q))


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("div", FAMILY, ids=ID)
def test_values_and_gradients_match_a_float64_reference_in_every_pruning_mode(div, mode):
  s, t, temperature = _logits(1), _logits(2), 1.7
  kept = None
  if mode:
    probe = targets.teacher_target(t, temperature, mode.get("top_k"), mode.get("top_p"), True)
    kept = np.asarray(probe.pruned_NxV) == 0  # the kept set the production code chose
  weights = jnp.arange(1.0, 13.0)
  with jax.enable_x64(True):
    s64, t64 = np.asarray(s, np.float64), np.asarray(t, np.float64)
    ref = jax.value_and_grad(
      lambda x: jnp.sum(_reference(div, x, t64, temperature, kept, mode.get("use_other_bucket")) * weights)
    )
    ref_value, ref_grad = ref(s64)
  value, grad = jax.value_and_grad(lambda x: jnp.sum(_value(x, t, temperature, div, **mode) * weights))(s)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, atol=2e-6 * float(np.abs(ref_grad).max()) + 1e-7)


def test_analytic_values_on_two_outcomes():
  """p = (0.5, 0.5), q = (0.9, 0.1), computed by hand."""
  s, t = jnp.log(jnp.asarray([[0.9, 0.1]])), jnp.log(jnp.asarray([[0.5, 0.5]]))
  p, q = (0.5, 0.5), (0.9, 0.1)
  kl = lambda a, b: sum(x * math.log(x / y) for x, y in zip(a, b, strict=True))
  mix = lambda w, a, b: tuple(w * x + (1 - w) * y for x, y in zip(a, b, strict=True))
  expected = {
    Divergence("forward_kl"): kl(p, q),
    Divergence("reverse_kl"): kl(q, p),
    Divergence("tvd"): 0.4,
    Divergence("jsd", 0.5): 0.5 * kl(p, mix(0.5, p, q)) + 0.5 * kl(q, mix(0.5, p, q)),
    Divergence("jsd", 0.2): 0.2 * kl(p, mix(0.2, p, q)) + 0.8 * kl(q, mix(0.2, p, q)),
    Divergence("skew_forward_kl", 0.1): kl(p, mix(0.1, p, q)),
    Divergence("skew_reverse_kl", 0.1): kl(q, mix(0.1, q, p)),
  }
  for div, want in expected.items():
    assert float(_value(s, t, 1.0, div)[0]) == pytest.approx(want, rel=1e-6), div


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("div", FAMILY, ids=ID)
def test_zero_at_identity_and_non_negative(div, mode):
  t = _logits(3)
  np.testing.assert_allclose(_value(t, t, 1.3, div, **mode), 0.0, atol=2e-6)
  for seed in range(4, 8):
    assert (np.asarray(_value(_logits(seed, scale=4.0), t, 1.3, div, **mode)) >= 0).all()


def test_limits_of_jsd_and_the_skews_are_the_two_kls():
  s, t = _logits(9, scale=0.5), _logits(10, scale=0.5)  # probability ratios within ~e^4: O(beta) terms stay small
  forward, reverse = _value(s, t, 1.0, Divergence("forward_kl")), _value(s, t, 1.0, Divergence("reverse_kl"))
  np.testing.assert_allclose(_value(s, t, 1.0, Divergence("skew_forward_kl", 0.0)), forward, rtol=1e-5)
  np.testing.assert_allclose(_value(s, t, 1.0, Divergence("skew_reverse_kl", 0.0)), reverse, rtol=1e-5)
  for beta in (1e-2, 1e-3):  # jsd / beta -> forward KL, jsd / (1 - beta) -> reverse KL, error linear in beta
    np.testing.assert_allclose(_value(s, t, 1.0, Divergence("jsd", beta)) / beta, forward, rtol=3 * beta)
    np.testing.assert_allclose(_value(s, t, 1.0, Divergence("jsd", 1 - beta)) / beta, reverse, rtol=3 * beta)
  config = pyconfig.from_dict({"model_name": "tiny", "use_kd": True, "kd_divergence": "jsd", "kd_jsd_beta": 0.0})
  assert Divergence.from_config(config) == Divergence("forward_kl")  # TRL's ends, exactly
  config = pyconfig.from_dict({"model_name": "tiny", "use_kd": True, "kd_divergence": "jsd", "kd_jsd_beta": 1.0})
  assert Divergence.from_config(config) == Divergence("reverse_kl")


def test_symmetric_ones_are_symmetric():
  s, t = _logits(11), _logits(12)
  for div in (Divergence("tvd"), Divergence("jsd", 0.5)):
    np.testing.assert_allclose(_value(s, t, 1.0, div), _value(t, s, 1.0, div), rtol=1e-5)
  swap = lambda a: (_value(s, t, 1.0, Divergence("jsd", a)), _value(t, s, 1.0, Divergence("jsd", 1 - a)))
  np.testing.assert_allclose(*swap(0.2), rtol=1e-5)  # jsd(beta; p, q) = jsd(1 - beta; q, p)
  np.testing.assert_allclose(
    _value(s, t, 1.0, Divergence("reverse_kl")), _value(t, s, 1.0, Divergence("forward_kl")), rtol=1e-5
  )


@pytest.mark.parametrize("mode", MODES[::2], ids=str)
@pytest.mark.parametrize("div", FAMILY, ids=ID)
def test_finite_for_extreme_logits_and_bf16(div, mode):
  s, t = _logits(13), _logits(14)
  s = s.at[:, 0].set(1e4).at[:, 1].set(-1e4)
  t = t.at[:, 2].set(1e4).at[:, 3].set(-1e4)
  for temperature in (0.05, 1.0, 20.0):
    for dtype in (jnp.float32, jnp.bfloat16):
      loss = lambda x, teacher, temp: jnp.sum(_value(x, teacher, temp, div, **mode))
      value, grad = jax.value_and_grad(loss)(s.astype(dtype), t.astype(dtype), temperature)
      assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad, np.float32)).all(), (temperature, dtype)
      assert value.dtype == jnp.float32 and float(value) >= 0


def _kd_sums(inputs, div, mode, chunk):
  hidden, teacher_hidden, w, tw, labels, weights = inputs
  per_token = {"hidden": hidden, "teacher_hidden": teacher_hidden, "targets": labels, "weights": weights}
  shared = {"w_DxV": w, "teacher_w_DxV": tw, "alpha": jnp.float32(0.5), "temperature": jnp.float32(2.0)}
  pruning = Pruning(mode.get("top_k", 0), mode.get("top_p", 0.0), mode.get("use_other_bucket", False))
  source = LiveTeacher(None, None, None, pruning, div)
  options = KDOptions(use_hard_labels=False, z_loss=0.0, temperature_is_one=False)
  chunk_fn = functools.partial(kd_chunk_sums, options=options, source=source)
  return max_utils.chunked_sums(chunk_fn, per_token, shared, chunk)


@pytest.mark.parametrize("mode", MODES[::2], ids=str)
@pytest.mark.parametrize("div", FAMILY, ids=ID)
def test_chunked_fused_path_equals_unchunked_per_token_values(div, mode):
  rng = np.random.default_rng(0)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  inputs = (f(48, 8), f(48, 8), f(8, 30), f(8, 30) * 2, jnp.asarray(rng.integers(0, 30, 48)), jnp.ones(48))

  def unchunked(h, w):
    s_logits, t_logits = h @ w, inputs[1] @ inputs[3]
    ce = max_utils.cross_entropy_with_logits(s_logits, inputs[4])[0]
    return jnp.sum(0.5 * ce + 0.5 * 4.0 * _value(s_logits, t_logits, 2.0, div, **mode))

  ref_value, ref_grads = jax.value_and_grad(unchunked, argnums=(0, 1))(inputs[0], inputs[2])
  for chunk in (7, 48):
    fused = lambda h, w, c=chunk: _kd_sums((h, inputs[1], w, *inputs[3:]), div, mode, c)["total_loss_sum"]
    value, grads = jax.value_and_grad(fused, argnums=(0, 1))(inputs[0], inputs[2])
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
      np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("div", FAMILY, ids=ID)
def test_offline_cache_with_k_equal_to_vocab_equals_the_online_value(div):
  student, teacher = _logits(15, (12, 40), 3.0), _logits(16, (12, 40), 3.0)
  values, ids, lse = targets.cache_fields(teacher, 40, (1.0, 2.0), jnp.float32)
  cache = {"teacher_values": values, "teacher_ids": ids, "teacher_lse": lse}
  for normalization in ("other_bucket", "renormalize_both"):
    source = CachedTopKTeacher(normalization, 40, 1, div)
    offline = jax.value_and_grad(lambda s, src=source: jnp.sum(src.chunk(cache, {}).divergence(s, 2.0)[0]))(student)
    online = jax.value_and_grad(lambda s: jnp.sum(_value(s, teacher, 2.0, div)))(student)
    np.testing.assert_allclose(offline[0], online[0], rtol=1e-5)
    np.testing.assert_allclose(offline[1], online[1], atol=1e-5)


def test_forward_kl_default_is_todays_loss_bit_for_bit():
  s, t = _logits(17), _logits(18)
  for mode in MODES:
    today = max_utils.kl_divergence_between_logits(
      s, t, 1.5, mode.get("top_k"), mode.get("top_p"), mode.get("use_other_bucket", False)
    )
    assert np.array_equal(np.asarray(_value(s, t, 1.5, Divergence(), **mode)), np.asarray(today))


# --- padded vocabularies: kd_vocab_size ---


def _padded_sums(student_w, teacher_w, kd_vocab, teacher_vocab, mode, div, alpha=1.0):
  rng = np.random.default_rng(5)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  hidden, teacher_hidden = f(32, 8), f(32, 8)
  per_token = {
    "hidden": hidden,
    "teacher_hidden": teacher_hidden,
    "targets": jnp.arange(32) % 20,
    "weights": jnp.ones(32),
  }
  pruning = Pruning(mode.get("top_k", 0), mode.get("top_p", 0.0), mode.get("use_other_bucket", False))
  source = LiveTeacher(None, None, None, pruning, div, teacher_vocab)
  options = KDOptions(use_hard_labels=False, z_loss=0.0, temperature_is_one=False, kd_vocab=kd_vocab)
  chunk_fn = functools.partial(kd_chunk_sums, options=options, source=source)

  def total(h, w):
    shared = {"w_DxV": w, "teacher_w_DxV": teacher_w, "alpha": jnp.float32(alpha), "temperature": jnp.float32(2.0)}
    sums = max_utils.chunked_sums(chunk_fn, {**per_token, "hidden": h}, shared, 16)
    return sums["total_loss_sum"], sums

  (_, sums), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(hidden, student_w)
  return sums, grads


@pytest.mark.parametrize("mode", [{}, {"top_p": 0.8, "use_other_bucket": True}], ids=str)
@pytest.mark.parametrize("div", [Divergence("forward_kl"), Divergence("jsd", 0.5)], ids=ID)
def test_padded_rows_of_teacher_or_student_change_nothing_in_the_kd_terms(div, mode):
  rng = np.random.default_rng(6)
  w, tw = jnp.asarray(rng.normal(size=(8, 24)), jnp.float32), jnp.asarray(rng.normal(size=(8, 24)) * 2, jnp.float32)
  pad = lambda x, n: jnp.concatenate([x, 5.0 * jnp.asarray(rng.normal(size=(8, n)), jnp.float32)], axis=1)
  base, base_grads = _padded_sums(w, tw, None, None, mode, div)
  padded_teacher, teacher_grads = _padded_sums(w, pad(tw, 16), None, 24, mode, div)  # teacher 40 rows, 24 real
  padded_student, student_grads = _padded_sums(pad(w, 8), tw, 24, None, mode, div)  # student 32 rows, 24 real
  for key in ("total_loss_sum", "kd/soft_loss_sum", "kd/kl_div_T1_sum", "kd/top1_agreement_sum", "kd/teacher_loss_sum"):
    np.testing.assert_allclose(padded_teacher[key], base[key], rtol=1e-6, err_msg=key)
    if key != "kd/teacher_loss_sum":  # the teacher's CE is over its own rows, padding included
      np.testing.assert_allclose(padded_student[key], base[key], rtol=1e-6, err_msg=key)
  np.testing.assert_allclose(teacher_grads[0], base_grads[0], atol=1e-6)
  np.testing.assert_allclose(student_grads[0], base_grads[0], atol=1e-6)  # alpha 1: the loss is the KD term only
  np.testing.assert_allclose(student_grads[1][:, :24], base_grads[1], atol=1e-6)
  assert not np.asarray(student_grads[1][:, 24:]).any()  # padded rows never receive mass, so no gradient


def test_kd_vocab_size_is_checked_against_both_vocabularies(tmp_path):
  from MaxText.config.errors import ConfigError

  base = {"model_name": "tiny", "use_kd": True, "kd_teacher_parameters_path": str(tmp_path)}
  with pytest.raises(ConfigError, match="with one tokenizer and differently padded embeddings set kd_vocab_size"):
    pyconfig.from_dict({**base, "kd_teacher_overrides": "vocab_size=336"})
  config = pyconfig.from_dict({**base, "kd_teacher_overrides": "vocab_size=336", "kd_vocab_size": 300})
  assert KDOptions.from_config(config).kd_vocab == 300
  with pytest.raises(ConfigError, match=r"kd_vocab_size: expected 0 to vocab_size \(320\), got 330"):
    pyconfig.from_dict({**base, "kd_teacher_overrides": "vocab_size=336", "kd_vocab_size": 330})
  with pytest.raises(ConfigError, match=r"kd_vocab_size: 300 is more than the teacher's vocab_size \(296\)"):
    pyconfig.from_dict({**base, "kd_teacher_overrides": "vocab_size=296", "kd_vocab_size": 300})


def test_offline_cache_over_the_shared_vocabulary_serves_a_padded_student():
  student, teacher = _logits(19, (16, 24), 3.0), _logits(20, (16, 24), 3.0)
  padded_student = jnp.concatenate([student, _logits(21, (16, 8), 5.0)], axis=1)
  values, ids, lse = targets.cache_fields(teacher, 24, (1.0,), jnp.float32)  # what the save job keeps for 24 ids
  # the student's logits are its hidden states times an identity unembedding: logits = padded_student
  xs = {"hidden": padded_student, "teacher_values": values, "teacher_ids": ids, "teacher_lse": lse}
  xs.update(targets=jnp.zeros(16, jnp.int32), weights=jnp.ones(16))
  shared = {"alpha": jnp.float32(1.0), "temperature": jnp.float32(1.0)}
  options = KDOptions(use_hard_labels=False, z_loss=0.0, temperature_is_one=True, kd_vocab=24)
  source = CachedTopKTeacher("other_bucket", 24, 0, Divergence("reverse_kl"))
  sums = kd_chunk_sums(xs, {**shared, "w_DxV": jnp.eye(32)}, options, source)
  want = jnp.sum(_value(student, teacher, 1.0, Divergence("reverse_kl")))
  np.testing.assert_allclose(sums["kd/soft_loss_sum"], want, rtol=1e-5)
