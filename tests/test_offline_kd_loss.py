"""Offline KD loss from cached top-k logits + log-sum-exps, against the online loss and float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import max_utils
from MaxText.distill.cached_source import CachedTopKTeacher
from MaxText.distill.kd_loss import KDOptions, kd_chunk_sums
from MaxText.distill.sources import LiveTeacher, Pruning
from MaxText.losses import targets

N, V = 12, 40
TOL = 1e-5


def _logits(seed, scale=3.0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(scale * rng.standard_normal((N, V)), jnp.float32)


def _cached(teacher, k, temperatures=(1.0, 2.0)):
  values, ids, lse = targets.cache_fields(teacher, k, temperatures, jnp.float32)
  return {"teacher_values": values, "teacher_ids": ids, "teacher_lse": lse}


def _offline(student, cache, temperature, normalization="other_bucket", lse_index=0):
  source = CachedTopKTeacher(normalization, V, lse_index)
  return source.chunk(cache, {}).divergence(student, temperature)[0]


def _value_and_grad(fn, student):
  return jax.value_and_grad(lambda s: jnp.sum(fn(s) * jnp.arange(1.0, N + 1)))(student)


@pytest.mark.parametrize(("temperature", "index"), [(1.0, 0), (2.0, 1)])
def test_k_equal_to_vocab_is_the_online_full_kl(temperature, index):
  student, teacher = _logits(0), _logits(1)
  cache = _cached(teacher, V)
  got = _value_and_grad(lambda s: _offline(s, cache, temperature, lse_index=index), student)
  want = _value_and_grad(lambda s: max_utils.kl_divergence_between_logits(s, teacher, temperature), student)
  np.testing.assert_allclose(got[0], want[0], rtol=TOL, atol=TOL)
  np.testing.assert_allclose(got[1], want[1], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("k", [1, 5, 17])
def test_top_k_other_bucket_equals_the_online_top_k_other_loss(k):
  student, teacher = _logits(2), _logits(3)
  cache = _cached(teacher, k)
  for temperature, index in ((1.0, 0), (2.0, 1)):
    got = _value_and_grad(lambda s, t=temperature, i=index: _offline(s, cache, t, lse_index=i), student)
    want = _value_and_grad(
      lambda s, t=temperature: max_utils.kl_divergence_between_logits(s, teacher, t, top_k=k, use_other_bucket=True),
      student,
    )
    np.testing.assert_allclose(got[0], want[0], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(got[1], want[1], rtol=TOL, atol=TOL)


def _reference(student, teacher, k, temperature, normalization):
  """float64 numpy: the three normalisations written out from their definitions."""
  s, t = np.asarray(student, np.float64) / temperature, np.asarray(teacher, np.float64) / temperature
  ids = np.argsort(-t, axis=-1)[:, :k]
  t_ids, s_ids = np.take_along_axis(t, ids, -1), np.take_along_axis(s, ids, -1)

  def log_softmax(x):
    return x - np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1, keepdims=True)) - x.max(-1, keepdims=True)

  p = np.exp(log_softmax(t_ids))
  if normalization == "renormalize_both":
    return np.sum(p * (np.log(p) - log_softmax(s_ids)), -1)
  return np.sum(p * (np.log(p) - np.take_along_axis(log_softmax(s), ids, -1)), -1)


@pytest.mark.parametrize("normalization", ["renormalize_both", "student_full"])
def test_renormalised_forms_match_their_float64_definitions(normalization):
  student, teacher = _logits(4), _logits(5)
  cache = _cached(teacher, 7)
  for temperature in (1.0, 2.0):
    got = _offline(student, cache, temperature, normalization)
    want = _reference(student, teacher, 7, temperature, normalization)
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)


def test_renormalize_both_is_zero_at_identity_and_student_full_is_not():
  teacher = _logits(6)
  cache = _cached(teacher, 5)
  np.testing.assert_allclose(_offline(teacher, cache, 1.0, "renormalize_both"), 0.0, atol=1e-6)
  # student_full at q = p: sum_I p~ log(p~ / p) = -log(teacher mass inside I) > 0
  mass = np.sum(np.exp(np.asarray(cache["teacher_values"]) - np.asarray(cache["teacher_lse"])[:, :1]), -1)
  np.testing.assert_allclose(_offline(teacher, cache, 1.0, "student_full"), -np.log(mass), rtol=1e-5)


def test_estimated_temperature_is_exact_for_a_flat_tail():
  # the tail (everything outside the top 6) is flat: the flat-tail estimate of lse_T is then exact
  rng = np.random.default_rng(7)
  teacher = np.full((N, V), -1.0, np.float32)
  teacher[:, :6] = 2.0 + rng.standard_normal((N, 6))
  teacher = jnp.asarray(teacher)
  cache = _cached(teacher, 7, (1.0, 3.0))  # the 7th cached logit is a tail logit
  for temperature, index in ((1.0, 0), (3.0, 1)):
    estimated = targets.teacher_lse_at(cache["teacher_values"], cache["teacher_lse"], temperature, None)
    np.testing.assert_allclose(estimated, cache["teacher_lse"][:, index], rtol=1e-6)
  student = _logits(8)
  np.testing.assert_allclose(
    _offline(student, cache, 3.0, lse_index=None), _offline(student, cache, 3.0, lse_index=1), rtol=1e-5, atol=1e-6
  )


def test_bfloat16_values_stay_finite_and_close():
  student, teacher = _logits(9), _logits(10)
  exact = _offline(student, _cached(teacher, 8), 2.0, lse_index=1)
  values, ids, lse = targets.cache_fields(teacher, 8, (1.0, 2.0), jnp.bfloat16)
  cache = {"teacher_values": values, "teacher_ids": ids, "teacher_lse": lse}
  rounded = _offline(student, cache, 2.0, lse_index=1)
  assert np.all(np.isfinite(rounded))
  np.testing.assert_allclose(rounded, exact, rtol=0.05, atol=0.02)  # bf16 keeps 8 bits of each logit


def test_hard_labels_are_the_student_ce_against_the_cached_argmax():
  rng = np.random.default_rng(11)
  hidden, w = jnp.asarray(rng.standard_normal((N, 16)), jnp.float32), jnp.asarray(rng.standard_normal((16, V)))
  teacher = _logits(12)
  xs = {
    "hidden": hidden,
    "targets": jnp.asarray(rng.integers(0, V, N)),
    "weights": jnp.asarray(rng.integers(0, 2, N), jnp.float32),
    **_cached(teacher, 4, (1.0,)),
  }
  options = KDOptions(use_hard_labels=True, z_loss=0.0, temperature_is_one=True)
  source = CachedTopKTeacher("other_bucket", V, 0)
  sums = kd_chunk_sums(xs, {"w_DxV": w, "alpha": 0.3, "temperature": 1.0}, options, source)
  student = np.asarray(hidden @ w, np.float64)
  log_q = student - np.log(np.sum(np.exp(student), -1, keepdims=True))
  ce_vs_argmax = -log_q[np.arange(N), np.argmax(np.asarray(teacher), -1)]
  np.testing.assert_allclose(sums["kd/soft_loss_sum"], np.sum(ce_vs_argmax * np.asarray(xs["weights"])), rtol=1e-5)
  ce = -log_q[np.arange(N), np.asarray(xs["targets"])]
  want_total = np.sum((0.7 * ce + 0.3 * ce_vs_argmax) * np.asarray(xs["weights"]))
  np.testing.assert_allclose(sums["total_loss_sum"], want_total, rtol=1e-5)


def test_online_and_offline_teachers_run_through_one_assembly_and_agree_at_k_equal_to_vocab():
  # kd_chunk_sums with a live teacher (its hidden states and unembedding) and with a cache of the same
  # teacher's logits at k = vocab: every summed term the two share, and the student's gradient, agree.
  rng = np.random.default_rng(13)
  f = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  hidden, w, teacher_hidden, teacher_w = f(N, 16), f(16, V), f(N, 8), 2.0 * f(8, V)
  common = {"targets": jnp.asarray(rng.integers(0, V, N)), "weights": jnp.asarray(rng.random(N) > 0.2, jnp.float32)}
  online_xs = {**common, "teacher_hidden": teacher_hidden}
  offline_xs = {**common, **_cached(teacher_hidden @ teacher_w, V, (1.0, 2.0))}
  shared = {"w_DxV": w, "alpha": jnp.float32(0.4), "temperature": jnp.float32(2.0)}
  options = KDOptions(use_hard_labels=False, z_loss=0.0, temperature_is_one=False)

  def run(source, xs, extra_shared):
    def total(h):
      sums = kd_chunk_sums({**xs, "hidden": h}, {**shared, **extra_shared}, options, source)
      return sums["total_loss_sum"], sums

    return jax.value_and_grad(total, has_aux=True)(hidden)

  (_, online), online_grad = run(LiveTeacher(None, None, None, Pruning()), online_xs, {"teacher_w_DxV": teacher_w})
  (_, offline), offline_grad = run(CachedTopKTeacher("other_bucket", V, 1), offline_xs, {})
  assert set(offline) == set(online) - {"kd/teacher_loss_sum"}  # only a live teacher has its own CE
  for key in offline:
    np.testing.assert_allclose(offline[key], online[key], rtol=TOL, atol=TOL, err_msg=key)
  np.testing.assert_allclose(offline_grad, online_grad, rtol=TOL, atol=TOL)
