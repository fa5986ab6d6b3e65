"""The KD divergence and loss: analytic values, invariants, chunking/fusion, gradients, numerics, schedules."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import max_utils, pyconfig
from MaxText.distill import schedules
from MaxText.distill.kd_loss import KDOptions, kd_chunk_sums
from MaxText.distill.sources import LiveTeacher, Pruning
from MaxText.losses import logit_kl, targets
from MaxText.losses.logit_kl import kl_to_teacher_logits
from MaxText.max_utils import kl_divergence_between_logits as kl

MODES = [
  {},
  {"top_k": 5},
  {"top_k": 5, "use_other_bucket": True},
  {"top_p": 0.8},
  {"top_p": 0.8, "use_other_bucket": True},
]


def dense_kl(student, teacher, temperature, top_k=None, top_p=None, use_other_bucket=False):
  """The dense-target path (`teacher_target` + `kd_divergence`): the reference the logit path and the
  public helper (which runs the logit path) are checked against."""
  target = targets.teacher_target(teacher, temperature, top_k, top_p, use_other_bucket)
  return max_utils.kd_divergence(student, target, temperature)


def _random_logits(seed, shape=(12, 40), scale=2.0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)


def test_analytic_top_k_renormalised():
  student, teacher = jnp.log(jnp.array([0.4, 0.4, 0.2])), jnp.log(jnp.array([0.6, 0.3, 0.1]))
  np.testing.assert_allclose(kl(student, teacher, 1.0, top_k=2), 0.2797765636, rtol=0, atol=1e-7)


def test_analytic_top_p_with_other_bucket():
  student = jnp.log(jnp.array([0.45, 0.25, 0.2, 0.1]))
  teacher = jnp.log(jnp.array([0.5, 0.25, 0.15, 0.1]))
  np.testing.assert_allclose(
    kl(student, teacher, 1.0, top_p=0.7, use_other_bucket=True), 0.0070998686, rtol=0, atol=1e-7
  )


def test_top_p_keeps_a_token_while_the_mass_strictly_before_it_is_below_p():
  logp = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
  assert max_utils.top_p_mask(logp, 0.75).tolist() == [[1, 1, 0, 0]]  # 0.75 is not < 0.75
  assert max_utils.top_p_mask(logp, 0.7500001).tolist() == [[1, 1, 1, 0]]
  assert max_utils.top_p_mask(logp, 0.3).tolist() == [[1, 0, 0, 0]]


def test_top_p_mask_equals_a_sorted_reference_on_random_rows():
  rng = np.random.default_rng(3)
  for scale, p in ((0.5, 0.9), (3.0, 0.9), (3.0, 0.5), (8.0, 0.99)):
    logp = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(16, 300)) * scale, jnp.float32))
    probs = np.exp(np.asarray(logp, np.float64))
    order = np.argsort(-probs, axis=-1, kind="stable")
    before = np.cumsum(np.take_along_axis(probs, order, -1), -1) - np.take_along_axis(probs, order, -1)
    expected, near = np.zeros_like(probs), np.zeros_like(probs, bool)
    np.put_along_axis(expected, order, (before < p).astype(float), -1)
    np.put_along_axis(near, order, np.abs(before - p) < 1e-6, -1)  # float32 cannot settle these
    got = np.asarray(max_utils.top_p_mask(logp, p))
    np.testing.assert_array_equal(got[~near], expected[~near])
    assert 0 < expected.sum() < expected.size


def test_top_p_cut_in_cache_sized_blocks_equals_the_whole_chunk_cut():
  # 131072 logits per row: CPU blocks of 2 rows, so 9 rows make 5 blocks, the last one filled with a padding row
  rng = np.random.default_rng(4)
  logp = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(9, 131072)) * 2.0, jnp.float32))
  whole = targets._nucleus_cut(logp, 0.9)
  np.testing.assert_array_equal(targets._nucleus_cut_in_blocks(logp, 0.9), whole)
  keys = targets._nucleus_keys(logp)
  np.testing.assert_array_equal(max_utils.top_p_mask(logp, 0.9), targets._kept(*keys, whole))
  assert 0 < float(jnp.sum(targets._kept(*keys, whole))) < logp.size


@pytest.mark.parametrize("mode", [{}, {"top_k": 5, "use_other_bucket": True}, {"top_p": 0.8, "use_other_bucket": True}])
def test_zero_at_identity(mode):
  logits = _random_logits(0)
  np.testing.assert_allclose(kl(logits, logits, 1.5, **mode), 0.0, atol=2e-6)


def test_renormalised_kl_at_identity_is_minus_log_kept_mass():
  logits = _random_logits(1)
  probs = np.asarray(jax.nn.softmax(logits))
  kept_mass = np.sort(probs, axis=-1)[:, ::-1][:, :5].sum(-1)
  np.testing.assert_allclose(kl(logits, logits, 1.0, top_k=5), -np.log(kept_mass), rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_non_negative_on_random_inputs(mode):
  for seed in range(5):
    value = np.asarray(kl(_random_logits(seed), _random_logits(seed + 100), 1.3, **mode))
    assert (value >= -1e-6).all()


def test_top_k_equal_to_vocab_and_top_p_near_one_equal_the_full_kl():
  s, t = _random_logits(2), _random_logits(3)
  full = kl(s, t, 2.0)
  for mode in (
    {"top_k": 40},
    {"top_k": 40, "use_other_bucket": True},
    {"top_k": 1000},
    {"top_p": 1.0 - 1e-7},
    {"top_p": 1.0 - 1e-7, "use_other_bucket": True},
    {"top_p": 1.0},
  ):
    np.testing.assert_allclose(kl(s, t, 2.0, **mode), full, rtol=1e-5, atol=1e-6)


def test_temperature_divides_both_logits():
  s, t = _random_logits(4), _random_logits(5)
  for mode in MODES:
    np.testing.assert_allclose(kl(s, t, 2.5, **mode), kl(s / 2.5, t / 2.5, 1.0, **mode), rtol=1e-5, atol=1e-6)


def _reference_kl(s, t, temperature, kept=None, other=False):
  """A direct float64 implementation of the definitions in the KD issue."""
  s_logp = jax.nn.log_softmax(s / temperature)
  t_logp = jax.nn.log_softmax(t / temperature)
  p, q = jnp.exp(t_logp), jnp.exp(s_logp)
  if kept is None:
    return jnp.sum(p * (t_logp - s_logp), -1)
  if other:
    p_other = jnp.sum(jnp.where(kept, 0, p), -1)
    q_other = jnp.sum(jnp.where(kept, 0, q), -1)
    return jnp.sum(jnp.where(kept, p * (t_logp - s_logp), 0), -1) + p_other * jnp.log(p_other / q_other)
  p_kept = jnp.where(kept, p, 0)
  p_tilde = p_kept / p_kept.sum(-1, keepdims=True)
  return jnp.sum(jnp.where(kept, p_tilde * (jnp.log(jnp.where(kept, p_tilde, 1)) - s_logp), 0), -1)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize("other", [False, True])
def test_values_and_gradients_match_a_float64_reference(temperature, other):
  s, t = np.asarray(_random_logits(6), np.float64), np.asarray(_random_logits(7), np.float64)
  kept = np.zeros_like(s, bool)
  np.put_along_axis(kept, np.argsort(-t, -1)[:, :5], True, -1)
  with jax.enable_x64(True):
    ref_value, ref_grad = jax.value_and_grad(lambda x: _reference_kl(x, t, temperature, kept, other).sum())(s)
  value, grad = jax.value_and_grad(
    lambda x: kl(x, jnp.asarray(t, jnp.float32), temperature, top_k=5, use_other_bucket=other).sum()
  )(jnp.asarray(s, jnp.float32))
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, atol=2e-6)


def _kept_float64(t, temperature, mode):
  """The kept set of a pruning by sorting, in float64 (None unpruned)."""
  if not mode.get("top_k") and not mode.get("top_p"):
    return None
  order = np.argsort(-t, -1, kind="stable")
  kept = np.zeros_like(t, bool)
  if mode.get("top_k"):
    np.put_along_axis(kept, order[:, : mode["top_k"]], True, -1)
    return kept
  p = np.exp(t / temperature - np.log(np.exp(t / temperature).sum(-1, keepdims=True)))
  p_sorted = np.take_along_axis(p, order, -1)
  np.put_along_axis(kept, order, np.cumsum(p_sorted, -1) - p_sorted < mode["top_p"], -1)
  return kept


def _logit_kl(student, teacher, temperature, mode):
  return kl_to_teacher_logits(
    student, teacher, temperature, mode.get("top_k", 0), mode.get("top_p", 0.0), mode.get("use_other_bucket", False)
  )


@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize("mode", MODES)
def test_kl_from_teacher_logits_matches_float64_and_the_dense_target_path(temperature, mode):
  """`kl_to_teacher_logits` (the live teacher's path, no [N, V] target arrays) against the float64
  definitions (values rtol 1e-5, gradients atol 2e-6, as above), and against the dense `teacher_target`
  path: the same kept tokens (the teacher mass kept within 1e-6) and values within float32 rounding."""
  s, t = np.asarray(_random_logits(6, scale=3.0), np.float64), np.asarray(_random_logits(7, scale=3.0), np.float64)
  kept = _kept_float64(t, temperature, mode)
  with jax.enable_x64(True):
    reference = lambda x: _reference_kl(x, t, temperature, kept, mode.get("use_other_bucket", False)).sum()
    ref_value, ref_grad = jax.value_and_grad(reference)(s)
  s32, t32 = jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)
  value, grad = jax.value_and_grad(lambda x: _logit_kl(x, t32, temperature, mode)[0].sum())(s32)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, atol=2e-6)
  per_token, mass_kept = _logit_kl(s32, t32, temperature, mode)
  dense = targets.teacher_target(
    t32, temperature, mode.get("top_k"), mode.get("top_p"), mode.get("use_other_bucket", False)
  )
  np.testing.assert_allclose(mass_kept, dense.mass_kept_N, atol=1e-6)
  np.testing.assert_allclose(per_token, dense_kl(s32, t32, temperature, **mode), rtol=1e-6)
  np.testing.assert_array_equal(kl(s32, t32, temperature, **mode), per_token)  # the helper is this path


def test_top_k_from_teacher_logits_with_a_tie_at_the_kth_logit_keeps_exactly_k_by_index():
  s, t = _random_logits(13), _random_logits(14)
  t = t.at[3, :8].set(5.0)  # eight equal largest logits in row 3: top-5 keeps the first five of them
  for other in (False, True):
    value, mass_kept = kl_to_teacher_logits(s, t, 1.5, 5, 0.0, other)
    dense = targets.teacher_target(t, 1.5, 5, None, other)
    np.testing.assert_allclose(value, dense_kl(s, t, 1.5, top_k=5, use_other_bucket=other), rtol=1e-6)
    np.testing.assert_allclose(mass_kept, dense.mass_kept_N, rtol=1e-6)  # five of the eight tied: 5/8 of theirs
    assert abs(float(mass_kept[3]) - float(dense.mass_kept_N[3])) < 1e-6


@pytest.mark.parametrize(
  "rows, per_block, layout",
  [(5, 2, ((0, 2), (2, 4), (3, 5))), (7, 5, ((0, 4), (3, 7)))],  # 7 rows at up to 5 a block: two of 4
  ids=["5-rows-by-2", "7-rows-evened"],
)
@pytest.mark.parametrize("mode", MODES)
def test_kl_from_teacher_logits_in_cache_sized_row_blocks_is_exact_bookkeeping(mode, rows, per_block, layout):
  """The CPU path runs blocks of at most `per_block` rows at this vocabulary, as even as they can be,
  the last one moved back to end at the last row. Each row's results are those of its block computed
  alone (bit for bit; rows computed twice take the last block's), so blocking adds nothing to the
  arithmetic tested above."""
  vocab = logit_kl._CPU_BLOCK_BYTES // 4 // per_block
  s, t = _random_logits(15, (rows, vocab), 3.0), _random_logits(16, (rows, vocab), 3.0)
  kind = "top_k" if mode.get("top_k") else "top_p" if mode.get("top_p") else "none"
  rule = logit_kl._Rule(kind, mode.get("top_k", 0), mode.get("top_p", 0.0), mode.get("use_other_bucket", False))
  kth = jnp.min(jax.lax.top_k(t, rule.top_k)[0], axis=-1) if rule.top_k else jnp.zeros(rows)
  temperature = jnp.float32(2.0)
  blocked = jax.jit(lambda s, t, kth: logit_kl._in_row_blocks(rule, s, t, kth, temperature))(s, t, kth)
  alone = jax.jit(lambda s, t, kth: logit_kl._fused_rows(rule, s, t, kth, temperature))
  for i, got in enumerate(blocked):
    want = np.zeros(got.shape, np.float32)
    for a, b in layout:
      want[a:b] = alone(s[a:b], t[a:b], kth[a:b])[i]
    np.testing.assert_array_equal(got, want)
  assert 0 < float(jnp.min(blocked[1])) <= float(jnp.max(blocked[1])) <= 1.0 + 1e-6


@pytest.mark.parametrize("mode", MODES)
def test_kl_from_teacher_logits_at_the_edges(mode):
  s, t = _random_logits(11), _random_logits(12)
  s = s.at[:, 0].set(1e4).at[:, 1].set(-1e4).at[:, -1].set(-jnp.inf)  # both rule the last token out
  t = t.at[:, 2].set(1e4).at[:, 3].set(-1e4).at[:, -1].set(-jnp.inf)
  for temperature in (0.05, 1.0, 20.0):
    for dtype in (jnp.float32, jnp.bfloat16):
      loss = lambda x, temp=temperature: jnp.sum(_logit_kl(x, t, temp, mode)[0])
      value, grad = jax.value_and_grad(loss)(s.astype(dtype))
      assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad, np.float32)).all(), (temperature, dtype)
      assert value.dtype == jnp.float32 and float(value) >= 0.0
  s, t = _random_logits(11), _random_logits(12)
  ruled_out = s.at[0, jnp.argmax(t[0])].set(-jnp.inf)  # the student rules out the teacher's top token
  ruled_out = ruled_out.at[1].set(jnp.where(jnp.arange(s.shape[1]) == jnp.argmax(t[1]), 0.0, -jnp.inf))
  value = _logit_kl(ruled_out, t, 1.0, mode)[0]  # row 1: the student has mass on the teacher's top token only
  np.testing.assert_array_equal(np.isinf(value), np.isinf(dense_kl(ruled_out, t, 1.0, **mode)))
  assert np.isinf(value[0]) and np.isfinite(value[2:]).all()


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_finite_differences(mode):
  s, t = _random_logits(8, (4, 16)), _random_logits(9, (4, 16))
  direction = _random_logits(10, (4, 16), 1.0)
  f = lambda x: jnp.sum(kl(x, t, 1.7, **mode))
  h = 1e-2
  numeric = (f(s + h * direction) - f(s - h * direction)) / (2 * h)
  analytic = jnp.sum(jax.grad(f)(s) * direction)
  np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("mode", MODES)
def test_finite_for_extreme_logits_minus_inf_tiny_and_huge_temperatures_and_bf16(mode):
  s, t = _random_logits(11), _random_logits(12)
  s = s.at[:, 0].set(1e4).at[:, 1].set(-1e4)
  t = t.at[:, 2].set(1e4).at[:, 3].set(-1e4).at[:, -1].set(-jnp.inf)  # teacher rules a token out
  s = s.at[:, -1].set(-jnp.inf)  # and so does the student (a padded vocabulary entry)
  for temperature in (0.05, 1.0, 20.0):
    for dtype in (jnp.float32, jnp.bfloat16):
      loss = lambda x, teacher, temp: jnp.sum(kl(x, teacher, temp, **mode))
      value, grad = jax.value_and_grad(loss)(s.astype(dtype), t.astype(dtype), temperature)
      assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad, np.float32)).all(), (temperature, dtype)
      assert value.dtype == jnp.float32 and float(value) >= -1e-3


def _kd_sums(hidden, teacher_hidden, w, tw, targets, weights, options, alpha=0.5, temperature=2.0, chunk=1000):
  per_token = {"hidden": hidden, "teacher_hidden": teacher_hidden, "targets": targets, "weights": weights}
  shared = {"w_DxV": w, "teacher_w_DxV": tw, "alpha": jnp.float32(alpha), "temperature": jnp.float32(temperature)}
  source = LiveTeacher(None, None, None, Pruning(options.top_k, options.top_p, options.use_other_bucket))
  kd_options = KDOptions(use_hard_labels=options.use_hard_labels, z_loss=0.0, temperature_is_one=False)
  return max_utils.chunked_sums(
    functools.partial(kd_chunk_sums, options=kd_options, source=source), per_token, shared, chunk
  )


def _kd_inputs(n=48, d=8, v=30, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return (
    f(n, d),
    f(n, d),
    f(d, v),
    f(d, v) * 2,
    jnp.asarray(rng.integers(0, v, n)),
    jnp.asarray(rng.random(n) > 0.25, jnp.float32),
  )


def _options(**kw):
  base = dict(top_k=0, top_p=0.0, use_other_bucket=False, use_hard_labels=False)
  return types.SimpleNamespace(**{**base, **kw})


OPTION_SETS = [
  _options(),
  _options(top_k=4),
  _options(top_k=4, use_other_bucket=True),
  _options(top_p=0.7),
  _options(top_p=0.7, use_other_bucket=True),
  _options(use_hard_labels=True),
]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_chunked_equals_unchunked_and_fused_equals_unfused(options):
  hidden, teacher_hidden, w, tw, targets, weights = _kd_inputs()

  def fused(h, w, chunk):
    sums = _kd_sums(h, teacher_hidden, w, tw, targets, weights, options, chunk=chunk)
    return sums["total_loss_sum"], sums

  def unfused(h, w):  # full logits, the public per-token functions, no chunking
    s_logits, t_logits = h @ w, teacher_hidden @ tw
    ce = max_utils.cross_entropy_with_logits(s_logits, targets)[0]
    if options.use_hard_labels:
      kd_term = max_utils.cross_entropy_with_logits(s_logits, jnp.argmax(t_logits, -1))[0]
    else:
      kd_term = 4.0 * dense_kl(
        s_logits, t_logits, 2.0, options.top_k or None, options.top_p or None, options.use_other_bucket
      )
    return jnp.sum((0.5 * ce + 0.5 * kd_term) * weights)

  ref_value, ref_grads = jax.value_and_grad(unfused, argnums=(0, 1))(hidden, w)
  for chunk in (7, 16, 48):
    (value, sums), grads = jax.value_and_grad(fused, argnums=(0, 1), has_aux=True)(hidden, w, chunk)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
      np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-5)
  assert float(sums["tokens"]) == float(weights.sum())


@pytest.mark.parametrize("options", OPTION_SETS)
def test_padding_contributes_nothing_whatever_its_amount(options):
  hidden, teacher_hidden, w, tw, targets, weights = _kd_inputs(n=20)
  base = _kd_sums(hidden, teacher_hidden, w, tw, targets, weights, options, chunk=8)
  for pad in (1, 13, 40):
    junk = lambda x, scale, pad=pad: jnp.concatenate([x, jnp.full((pad, *x.shape[1:]), scale, x.dtype)])
    padded = _kd_sums(
      junk(hidden, 50.0), junk(teacher_hidden, -30.0), w, tw, junk(targets, 3), junk(weights, 0.0), options, chunk=8
    )
    for key in base:
      np.testing.assert_allclose(padded[key], base[key], rtol=1e-6, atol=1e-6)


def test_soft_loss_is_t_squared_times_kl_at_t_and_hard_labels_use_teacher_argmax():
  hidden, teacher_hidden, w, tw, targets, weights = _kd_inputs()
  for temperature in (0.5, 3.0):
    sums = _kd_sums(hidden, teacher_hidden, w, tw, targets, weights, _options(), temperature=temperature)
    np.testing.assert_allclose(sums["kd/soft_loss_sum"], temperature**2 * sums["kd/kl_div_at_T_sum"], rtol=1e-6)
  sums = _kd_sums(hidden, teacher_hidden, w, tw, targets, weights, _options(use_hard_labels=True), alpha=1.0)
  s_logits, t_logits = hidden @ w, teacher_hidden @ tw
  expected = jnp.sum(max_utils.cross_entropy_with_logits(s_logits, jnp.argmax(t_logits, -1))[0] * weights)
  np.testing.assert_allclose(sums["kd/soft_loss_sum"], expected, rtol=1e-6)
  np.testing.assert_allclose(sums["total_loss_sum"], expected, rtol=1e-6)
  agree = jnp.sum((jnp.argmax(s_logits, -1) == jnp.argmax(t_logits, -1)) * weights)
  np.testing.assert_allclose(sums["kd/top1_agreement_sum"], agree)


def test_alpha_zero_total_is_exactly_the_cross_entropy():
  hidden, teacher_hidden, w, tw, targets, weights = _kd_inputs()
  sums = _kd_sums(hidden, teacher_hidden, w, tw, targets, weights, _options(top_p=0.7), alpha=0.0)
  assert float(sums["total_loss_sum"]) == float(sums["ce_sum"])


@pytest.mark.parametrize("kind, mid, end", [("constant", 0.8, 0.8), ("linear", 0.5, 0.2), ("cosine", 0.5, 0.2)])
def test_schedules_at_start_mid_and_end(kind, mid, end):
  value = lambda step: float(schedules.schedule_value(0.8, 0.2, kind, step, 100))
  assert value(0) == pytest.approx(0.8)
  assert value(50) == pytest.approx(mid)
  assert value(100) == pytest.approx(end)
  assert value(150) == pytest.approx(end)  # progress is clipped
  if kind == "cosine":
    assert value(25) == pytest.approx(0.2 + 0.6 * (1 + np.cos(np.pi / 4)) / 2)


def test_alpha_and_temperature_follow_their_config_schedules():
  c = pyconfig.from_dict(
    {
      "use_kd": True,
      "steps": 10,
      "kd_alpha": 1.0,
      "kd_alpha_end": 0.0,
      "kd_alpha_schedule": "linear",
      "kd_temperature": 4.0,
      "kd_temperature_end": 1.0,
      "kd_temperature_schedule": "cosine",
    }
  )
  assert float(schedules.alpha_at(c, 5)) == pytest.approx(0.5)
  assert float(schedules.temperature_at(c, 0)) == pytest.approx(4.0)
  assert float(schedules.temperature_at(c, 10)) == pytest.approx(1.0)


@pytest.mark.parametrize("top_k", [None, 5])
def test_expected_draft_acceptance_is_one_minus_the_total_variation_distance(top_k):
  """sum_x min(p, q) against a float64 definition, 1 - TVD; with top-k + OTHER the pruned tokens are one outcome."""
  from MaxText.distill.kd_loss import expected_acceptance
  from MaxText.losses.targets import teacher_target

  rng = np.random.default_rng(3)
  teacher, student = rng.normal(0, 2, (16, 40)), rng.normal(0, 2, (16, 40))
  got = expected_acceptance(teacher_target(jnp.asarray(teacher, jnp.float32), 1.0, top_k, None, top_k is not None),
                            jnp.asarray(student, jnp.float32))  # fmt: skip
  p = np.exp(teacher - teacher.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  q = np.exp(student - student.max(1, keepdims=True))
  q /= q.sum(1, keepdims=True)
  if top_k is not None:  # the (k+1)-way distributions: the kept ids, then everything else as one outcome
    kept = np.argsort(-teacher, axis=1)[:, :top_k]
    p_kept, q_kept = np.take_along_axis(p, kept, 1), np.take_along_axis(q, kept, 1)
    p = np.concatenate([p_kept, 1 - p_kept.sum(1, keepdims=True)], 1)
    q = np.concatenate([q_kept, 1 - q_kept.sum(1, keepdims=True)], 1)
  np.testing.assert_allclose(np.asarray(got), 1 - 0.5 * np.abs(p - q).sum(1), rtol=0, atol=2e-6)
  np.testing.assert_allclose(np.asarray(got), np.minimum(p, q).sum(1), rtol=0, atol=2e-6)
