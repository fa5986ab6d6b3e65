"""Structured pruning (MaxText/prune_student.py, distill/pruning.py)."""

import dataclasses
import json
import os
import sys

import forked_jobs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from MaxText import pyconfig
from MaxText.distill import pruning
from MaxText.model import params_io
from MaxText.model.decoder import abstract_model, bind, init_params, split_params

# A small Llama with GQA: 4 layers, width 64, 4 query / 2 KV heads of 16, MLP 128, vocab 288 (bytes need 259).
MODEL = dict(
  model_name="default",
  vocab_size=288,
  emb_dim=64,
  num_decoder_layers=4,
  num_query_heads=4,
  num_kv_heads=2,
  head_dim=16,
  mlp_dim=128,
  dtype="float32",
  max_target_length=32,
  per_device_batch_size=2,
  init_std=0.2,  # large enough that every block changes the residual stream visibly
)
RUN = ["dataset_type=text", "prune_calibration_batches=2", "per_device_batch_size=2", "max_target_length=32"]


def _config(**overrides):
  return pyconfig.from_dict({**MODEL, **overrides})


def _params(config):
  _, abstract, _ = split_params(abstract_model(config))
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  return jax.tree.map(np.array, init_params(config, shardings))  # writable copies


def _logits(config, params, tokens):
  graphdef, _, _ = split_params(abstract_model(config))
  return np.asarray(bind(graphdef, jax.tree.map(jnp.asarray, params)).logits(tokens))


def _batches(config, count=2, seed=0):
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    tokens = rng.integers(0, config.vocab_size, (2, config.max_target_length + 1))
    ones = np.ones((2, config.max_target_length), np.int32)
    positions = np.broadcast_to(np.arange(config.max_target_length), ones.shape)
    batches.append(
      {
        "inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
        "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
        "inputs_segmentation": jnp.asarray(ones),
        "targets_segmentation": jnp.asarray(ones),
        "inputs_position": jnp.asarray(positions, jnp.int32),
      }
    )
  return batches


def _logits64(config, params, tokens):
  """`_logits` with the layers computed in float64: the pruned model sums over fewer terms than the full
  one, in another order, and in float32 that alone moved a logit by 1.02e-5 of the largest on one CPU."""
  with jax.enable_x64(True):
    config = dataclasses.replace(config, dtype="float64", weight_dtype="float64")
    return _logits(config, jax.tree.map(lambda x: np.asarray(x, np.float64), params), tokens)


def _assert_same_logits(small, pruned, config, reference, tokens):
  """The pruned model's logits equal the reference model's up to rounding (1e-5 of the largest logit; a
  wrongly cut tensor is off by the order of the logits themselves), both models' layers in float64."""
  pruned_logits, reference_logits = _logits64(small, pruned, tokens), _logits64(config, reference, tokens)
  np.testing.assert_allclose(pruned_logits, reference_logits, atol=1e-5 * np.abs(reference_logits).max(), rtol=0)


def _prune(config, params, batches, metric="cosine"):
  plan = pruning.make_plan(pruning.measure_importance(config, params, batches, metric), config)
  return plan, pruning.apply_plan(params, plan)


def test_pruning_nothing_returns_the_teacher_bit_for_bit():
  config = _config()
  params = _params(config)
  plan, pruned = _prune(config, params, _batches(config))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(pruned), strict=True):
    assert a.shape == b.shape and np.array_equal(a, b), jax.tree_util.keystr(path)
  tokens = _batches(config)[0]["inputs"]
  assert np.array_equal(_logits(config, params, tokens), _logits(config, pruned, tokens))
  assert pruning.pruned_model_keys(config, plan) == {
    "num_decoder_layers": 4, "emb_dim": 64, "mlp_dim": 128, "num_kv_heads": 2, "num_query_heads": 4
  }  # fmt: skip


def _silenced(params, layer=None, neurons=(), groups=(), per_group=2):
  """The same model with a layer made the identity, or some neurons / KV groups contributing nothing."""
  out = jax.tree.map(np.copy, params)
  if layer is not None:
    out["layers"]["out"][layer] = 0
    out["layers"]["wo"][layer] = 0
  for j in neurons:
    out["layers"]["wo"][:, j, :] = 0
  for g in groups:
    out["layers"]["out"][:, g * per_group : (g + 1) * per_group] = 0
  return out


def test_a_dead_layer_goes_first_and_removing_it_equals_skipping_it():
  config = _config(prune_num_layers=3)
  params = _silenced(_params(config), layer=2)
  plan, pruned = _prune(config, params, _batches(config))
  assert plan.layers.tolist() == [0, 1, 3]
  tokens = _batches(config, seed=1)[0]["inputs"]
  small = _config(num_decoder_layers=3)
  _assert_same_logits(small, pruned, config, params, tokens)


def _mean_ce(config, params, batches) -> float:
  """Next-token cross-entropy in float64 numpy from the model's logits (independent of the job's loss)."""
  total, count = 0.0, 0
  for b in batches:
    logits = _logits(config, params, b["inputs"]).astype(np.float64)
    logp = (
      logits
      - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
      - logits.max(-1, keepdims=True)
    )
    total -= np.take_along_axis(logp, np.asarray(b["targets"])[..., None], -1).sum()
    count += b["targets"].size
  return total / count


def test_loss_metric_is_the_calibration_loss_rise_when_a_layer_is_skipped():
  config = _config(prune_num_layers=3)
  params = _silenced(_params(config), layer=2)
  batches = _batches(config)
  rises = pruning.skip_losses(config, jax.tree.map(jnp.asarray, params), batches)
  base = _mean_ce(config, params, batches)
  expected = [_mean_ce(config, _silenced(params, layer=i), batches) - base for i in range(4)]
  np.testing.assert_allclose(rises, expected, atol=2e-5, rtol=0)
  assert abs(rises[2]) < 1e-6  # skipping the identity layer changes nothing
  plan, _ = _prune(config, params, batches, "loss")
  assert int(np.argmin(rises)) not in plan.layers.tolist() and len(plan.layers) == 3


def test_dead_neurons_and_a_dead_kv_group_go_first_and_the_output_is_unchanged():
  config = _config(prune_mlp_dim=125, prune_num_query_heads=2)
  params = _params(config)
  # neurons 5, 77, 100 never fire (up-projection zero) in every layer; KV group 0 attends to zeros
  params["layers"]["wi_up"][:, :, [5, 77, 100]] = 0
  params["layers"]["value"][:, :, 0] = 0
  plan, pruned = _prune(config, params, _batches(config))
  assert all(set(row) == set(range(128)) - {5, 77, 100} for row in plan.neurons.tolist())
  assert plan.kv_groups.tolist() == [[1]] * 4
  small = _config(mlp_dim=125, num_query_heads=2, num_kv_heads=1)
  tokens = _batches(config, seed=1)[0]["inputs"]
  _assert_same_logits(small, pruned, config, params, tokens)


def test_removing_live_neurons_and_groups_equals_silencing_them():
  """The slicing itself: a pruned model computes what the full one computes with those units silenced."""
  config = _config(prune_mlp_dim=96, prune_num_query_heads=2)
  params = _params(config)
  plan, pruned = _prune(config, params, _batches(config))
  silenced = jax.tree.map(np.copy, params)
  for row, layer in enumerate(plan.layers):
    dropped = sorted(set(range(128)) - set(plan.neurons[row].tolist()))
    silenced["layers"]["wo"][layer, dropped, :] = 0
    for g in set(range(2)) - set(plan.kv_groups[row].tolist()):
      silenced["layers"]["out"][layer, 2 * g : 2 * g + 2] = 0
  small = _config(mlp_dim=96, num_query_heads=2, num_kv_heads=1)
  tokens = _batches(config, seed=1)[0]["inputs"]
  _assert_same_logits(small, pruned, config, silenced, tokens)


def test_a_dead_embedding_channel_goes_first():
  config = _config(prune_emb_dim=63)
  params = _params(config)
  params["token_embedder"][:, 17] = 0  # nothing ever writes channel 17: the residual stream is 0 there
  params["layers"]["out"][..., 17] = 0
  params["layers"]["wo"][..., 17] = 0
  plan, pruned = _prune(config, params, _batches(config))
  assert 17 not in plan.channels.tolist() and len(plan.channels) == 63
  assert pruned["token_embedder"].shape == (288, 63) and pruned["layers"]["query"].shape == (4, 63, 4, 16)


def _job(tmp_path, *args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "-m", "MaxText.prune_student", "base.yml", *args]
  return forked_jobs.run(cmd, env=env, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """A parameters-only teacher with its model_config.json, as the converters write it."""
  folder = tmp_path_factory.mktemp("teacher") / "ckpt"
  config = _config()
  params_io.save_params(str(folder), _params(config))
  keys = {k: getattr(config, k) for k in pyconfig.MODEL_KEYS}
  (folder / params_io.MODEL_CONFIG_FILE).write_text(json.dumps(keys))
  corpus = folder.parent / "corpus.txt"
  corpus.write_text("Now is the winter of our discontent made glorious summer by this sun of York.\n" * 40)
  return folder, corpus


def test_prune_job_writes_a_checkpoint_a_run_loads_with_its_model_config(tmp_path, teacher_dir):
  teacher, corpus = teacher_dir
  out = tmp_path / "student"
  targets = ["prune_num_layers=3", "prune_mlp_dim=64", "prune_num_query_heads=2", "prune_emb_dim=48"]
  args = [f"load_parameters_path={teacher}", f"prune_output_dir={out}", f"dataset_path={corpus}", *RUN, *targets]
  proc = _job(tmp_path, *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.loads((out / params_io.MODEL_CONFIG_FILE).read_text())
  assert {k: saved[k] for k in ("num_decoder_layers", "mlp_dim", "num_query_heads", "num_kv_heads", "emb_dim")} == {
    "num_decoder_layers": 3, "mlp_dim": 64, "num_query_heads": 2, "num_kv_heads": 1, "emb_dim": 48
  }  # fmt: skip
  report = json.loads((out / "prune_report.json").read_text())
  assert report["parameters"]["after"] < report["parameters"]["before"]
  student = pyconfig.from_dict({**MODEL, **{k: saved[k] for k in pyconfig.MODEL_KEYS}})
  _, abstract, _ = split_params(abstract_model(student))
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  loaded = params_io.load_params(str(out), abstract, shardings)  # shapes must agree with the saved config
  assert sum(x.size for x in jax.tree.leaves(loaded)) == report["parameters"]["after"]
  assert np.isfinite(_logits(student, jax.tree.map(np.asarray, loaded), _batches(student)[0]["inputs"])).all()


@pytest.mark.parametrize(
  "extra, message",
  [
    (["prune_num_layers=9"], "prune_num_layers: 9 is more than the model has (4)"),
    (["prune_num_query_heads=3"], "prune_num_query_heads: 3 is not a whole number of KV groups (2 query heads each)"),
    (["emb_dim=32"], "emb_dim: 32 given, but"),
    (["prune_layer_metric=entropy"], "prune_layer_metric: expected one of cosine, loss"),
  ],
)
def test_bad_targets_are_one_line_errors_and_nothing_is_written(tmp_path, teacher_dir, extra, message):
  teacher, corpus = teacher_dir
  out = tmp_path / "student"
  proc = _job(
    tmp_path, f"load_parameters_path={teacher}", f"prune_output_dir={out}", f"dataset_path={corpus}", *RUN, *extra
  )
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.strip().count("\n") == 0 and not out.exists()
