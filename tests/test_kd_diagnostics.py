"""KD diagnostics on logged steps only: the loss is unchanged, the diagnostics exact where they are computed."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import pyconfig
from MaxText.distill.kd_loss import DIAGNOSED_TOKENS, KDOptions, is_diagnostic, kd_chunk_sums
from MaxText.distill.objective import is_logged_step
from MaxText.distill.sources import LiveTeacher, Pruning
from MaxText.training.metrics import token_means

LOSS_TERMS = ("total_loss_sum", "ce_sum", "kd/soft_loss_sum", "kd/kl_div_at_T_sum", "kd/teacher_mass_kept_sum")
DIAGNOSTICS = ("kd/kl_div_T1_sum", "kd/top1_agreement_sum", "kd/teacher_loss_sum")


def _chunk(seed=0, n=24, d=8, v=40):
  rng = np.random.default_rng(seed)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  hidden = f(n, d)
  xs = {  # a teacher close to the student, so that they agree on some top-1 tokens
    "hidden": hidden,
    "teacher_hidden": hidden + 0.3 * f(n, d),
    "targets": jnp.asarray(rng.integers(0, v, n)),
    "weights": jnp.asarray(rng.random(n) > 0.2, jnp.float32),
  }
  w = f(d, v)
  shared = {"w_DxV": w, "teacher_w_DxV": w * 1.5, "alpha": jnp.float32(0.5), "temperature": jnp.float32(1.0)}
  return xs, shared


def _sums(options, pruning=None, diagnose=None, temperature=1.0, seed=0):
  xs, shared = _chunk(seed)
  shared["temperature"] = jnp.float32(temperature)
  if diagnose is not None:
    shared["diagnose"] = jnp.asarray(diagnose)
  source = LiveTeacher(None, None, None, pruning or Pruning())
  return jax.jit(lambda x, s: kd_chunk_sums(x, s, options, source))(xs, shared)


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("pruning", [Pruning(), Pruning(top_p=0.8, use_other_bucket=True)])
def test_a_skipped_step_has_the_same_loss_and_no_diagnostics(hard, pruning):
  options = KDOptions(use_hard_labels=hard, z_loss=1e-3, temperature_is_one=False)
  always = _sums(options, pruning, temperature=2.0)
  due = _sums(options, pruning, diagnose=True, temperature=2.0)
  skipped = _sums(options, pruning, diagnose=False, temperature=2.0)
  for key in LOSS_TERMS:  # the same arithmetic; XLA may fuse it differently around the cond: float32 rounding
    np.testing.assert_allclose(float(skipped[key]), float(always[key]), rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(float(due[key]), float(always[key]), rtol=1e-6, err_msg=key)
  for key in DIAGNOSTICS:
    np.testing.assert_allclose(float(due[key]), float(always[key]), rtol=1e-6, err_msg=key)
    assert float(skipped[key]) == 0.0 and float(always[key]) != 0.0, key
  assert float(due[DIAGNOSED_TOKENS]) == float(always["tokens"]) > 0 and float(skipped[DIAGNOSED_TOKENS]) == 0.0


def test_at_t1_unpruned_the_kl_t1_is_the_kd_term_itself():
  reused = _sums(KDOptions(use_hard_labels=False, z_loss=0.0, temperature_is_one=True))
  computed = _sums(KDOptions(use_hard_labels=False, z_loss=0.0, temperature_is_one=False))
  for key in (*LOSS_TERMS, *DIAGNOSTICS):
    np.testing.assert_allclose(float(reused[key]), float(computed[key]), rtol=1e-6, err_msg=key)
  np.testing.assert_allclose(float(reused["kd/kl_div_T1_sum"]), float(reused["kd/kl_div_at_T_sum"]), rtol=0)


@pytest.mark.parametrize(
  "overrides, reused",
  [
    ({}, True),
    ({"kd_temperature": 2.0}, False),
    ({"kd_top_p": 0.9}, False),
    ({"kd_top_k": 8}, False),
    ({"kd_divergence": "reverse_kl"}, False),
    ({"kd_use_hard_labels": True}, False),
    ({"kd_temperature_schedule": "linear", "kd_temperature_end": 2.0}, False),
  ],
)
def test_the_kl_t1_is_reused_only_where_it_equals_the_kd_term(overrides, reused):
  config = pyconfig.from_dict({"use_kd": True, "dataset_type": "synthetic", **overrides})
  assert KDOptions.from_config(config).temperature_is_one is reused


def test_logged_steps_are_every_log_period_and_the_last():
  config = types.SimpleNamespace(log_period=4, steps=10)
  logged = [int(s) + 1 for s in range(10) if bool(is_logged_step(config, jnp.int32(s)))]
  assert logged == [4, 8, 10]


def test_diagnostics_are_averaged_over_the_steps_that_computed_them():
  # a window of three steps (10 tokens each); only the last one computed the diagnostics
  window = {"tokens": 30.0, "ce_sum": 60.0, "kd/kl_div_T1_sum": 5.0, "kd/wide/teacher_loss_sum": 20.0}
  window[DIAGNOSED_TOKENS] = 10.0
  means = token_means(window)
  assert means == {"ce": 2.0, "kd/kl_div_T1": 0.5, "kd/wide/teacher_loss": 2.0}
  assert is_diagnostic("kd/top1_agreement") and not is_diagnostic("kd/teacher_mass_kept")
  assert not is_diagnostic("kd/soft_loss") and not is_diagnostic("ce")
