"""On-policy distillation: prompts cut from the batch, the student's samples as the only targets, the step
choice, the keys' checks, and a run whose teacher-scored reverse KL on student samples falls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import config as config_lib
from MaxText import pyconfig
from MaxText.distill import on_policy
from MaxText.inference.generate import generate
from MaxText.inference.sampling import Sampling
from tests.conftest import TINY, read_metrics, run_train

L, N = 12, 4


def _batch():
  """Row 0: a conversation whose targets start at position 5; row 1: plain text (targets from 0);
  row 2: two packed segments of 3 and 7 tokens, targets from 0."""
  inputs = np.arange(3 * L, dtype=np.int32).reshape(3, L) % 200 + 3
  inputs_seg = np.ones((3, L), np.int32)
  inputs_seg[2, 3:10], inputs_seg[2, 10:] = 2, 0
  targets_seg = inputs_seg.copy()
  targets_seg[0, :5] = 0
  positions = np.tile(np.arange(L, dtype=np.int32), (3, 1))
  positions[2, 3:10] = np.arange(7)
  batch = {"inputs": inputs, "targets": np.roll(inputs, -1, axis=1), "inputs_position": positions}
  batch.update(inputs_segmentation=inputs_seg, targets_segmentation=targets_seg)
  return {k: jnp.asarray(v) for k, v in batch.items()}


def test_prompts_end_at_the_first_target_or_leave_room_for_the_sample():
  np.testing.assert_array_equal(on_policy.prompt_lengths(_batch(), N), [6, L - N, 3])


def test_the_sampled_batch_keeps_each_prompt_and_targets_only_the_samples():
  from flax import nnx

  from MaxText.model.decoder import Decoder

  model = Decoder(pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "init_std": 0.3}), nnx.Rngs(0))
  batch, key = _batch(), jax.random.key(4)
  got = on_policy.sampled_batch(model, batch, key, 1.0, N, stop_ids=())
  prompt = [6, L - N, 3]
  samples = generate(model, batch["inputs"], jnp.asarray(prompt), key, Sampling("weighted", 1.0), N)
  for row, n in enumerate(prompt):
    sequence = np.concatenate([np.asarray(batch["inputs"][row, :n]), np.asarray(samples.tokens_BxN[row])])
    np.testing.assert_array_equal(got["inputs"][row, : n + N - 1], sequence[:-1])
    np.testing.assert_array_equal(got["targets"][row, : n + N - 1], sequence[1:])
    want_targets = np.zeros(L, np.int32)
    want_targets[n - 1 : n + N - 1] = 1  # the positions whose target is a sampled token
    np.testing.assert_array_equal(got["targets_segmentation"][row], want_targets)
    assert got["inputs_segmentation"][row].tolist() == [1] * (n + N - 1) + [0] * (L - n - N + 1)


def test_the_share_of_on_policy_steps_follows_the_fraction_and_is_reproducible():
  config = pyconfig.from_dict({"model_name": "tiny", "use_kd": True, "kd_on_policy_fraction": 0.3})
  chosen = [on_policy.is_on_policy_step(config, step) for step in range(1, 2001)]
  assert abs(np.mean(chosen) - 0.3) < 0.04  # 2000 draws: standard error 0.010
  assert chosen == [on_policy.is_on_policy_step(config, step) for step in range(1, 2001)]


@pytest.mark.parametrize(
  ("extra", "message"),
  [
    ({"kd_on_policy_max_new_tokens": 8}, "kd_on_policy_max_new_tokens: has no effect with kd_on_policy_fraction=0"),
    ({"kd_on_policy_fraction": 0.5, "kd_offline_data_dir": "c"}, "needs a live teacher to score"),
    ({"kd_on_policy_fraction": 0.5, "kd_use_hard_labels": True}, "not hard labels"),
    ({"kd_on_policy_fraction": 0.5, "kd_on_policy_max_new_tokens": 128}, "leaves no prompt in max_target_length"),
    ({"kd_on_policy_fraction": 1.5}, "kd_on_policy_fraction: expected a value in"),
  ],
)
def test_on_policy_keys_are_checked(extra, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load_dict({"model_name": "tiny", "use_kd": True, **extra})


@pytest.mark.slow
def test_an_on_policy_run_lowers_the_teachers_reverse_kl_on_student_samples(tmp_path):
  run_train(tmp_path, *TINY, "run_name=teacher", "steps=40", "learning_rate=5e-3", "checkpoint_period=40")
  kd = ["use_kd=true", f"kd_teacher_parameters_path={tmp_path / 'teacher' / 'checkpoints' / '40'}"]
  kd += ["kd_on_policy_fraction=1.0", "kd_on_policy_max_new_tokens=16", "learning_rate=5e-3"]
  run_train(tmp_path, *TINY, "run_name=gkd", "steps=30", *kd)
  records = [r for r in read_metrics(tmp_path / "gkd") if "kd/kl_div_at_T" in r]
  assert all(r["kd/on_policy"] == 1.0 and r["kd/generation_s"] > 0 for r in records)
  assert all(r["kd/alpha"] == 1.0 for r in records)  # the samples' labels are the student's own
  reverse_kl = [r["kd/kl_div_at_T"] for r in records]  # KL(student || teacher) on the student's samples
  assert np.mean(reverse_kl[-5:]) < 0.3 * np.mean(reverse_kl[:3]), reverse_kl
