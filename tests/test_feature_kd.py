"""Feature-level distillation: distances, layer mapping, projection, masking, scan parity, memory, end to end."""

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from MaxText import pyconfig
from MaxText.distill import feature_head
from MaxText.distill.objective import make_loss_fn
from MaxText.distill.schedules import step_metrics
from MaxText.distill.sources import LiveTeacher
from MaxText.losses.features import feature_distance
from MaxText.model import decoder as model_lib
from MaxText.parallel import sharding
from MaxText.pyconfig import ConfigError
from MaxText.training.state import init_state, make_layout
from MaxText.training.step import make_train_step
from tests.conftest import TINY, read_metrics, run_train, train_losses


def test_cosine_distance_of_identical_features_is_0_and_of_opposite_ones_2():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 8)), jnp.float32)
  np.testing.assert_allclose(feature_distance(x, 3 * x, "cosine"), 0.0, atol=1e-6)
  np.testing.assert_allclose(feature_distance(x, -x, "cosine"), 2.0, atol=1e-6)


def test_l2_is_the_mean_squared_difference():
  a, b = jnp.array([[1.0, 2.0, 3.0, 4.0]]), jnp.array([[0.0, 2.0, 5.0, 1.0]])
  np.testing.assert_allclose(feature_distance(a, b, "l2"), [(1 + 0 + 4 + 9) / 4])


def test_zero_features_give_no_nan_values_or_gradients():
  zeros = jnp.zeros((3, 6))
  for kind in ("cosine", "l2"):
    value, grad = jax.value_and_grad(lambda a, k=kind: feature_distance(a, zeros, k).sum())(zeros)
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()


def _values(**overrides):
  return dataclasses.asdict(pyconfig.from_dict({"model_name": "tiny", "use_kd": True, "kd_beta": 1.0, **overrides}))


def test_layer_mapping_for_equal_and_unequal_depths(tmp_path):
  assert pyconfig.feature_layer_pairs(_values(num_decoder_layers=4)) == [(0, 0), (1, 1), (2, 2), (3, 3)]
  teacher = tmp_path / "t"
  teacher.mkdir()
  deep = _values(
    num_decoder_layers=8,
    kd_teacher_parameters_path=str(teacher),
    kd_teacher_model_name="tiny",
    kd_teacher_overrides="num_decoder_layers=32",
  )
  assert pyconfig.feature_layer_pairs(deep) == [(1, 7), (3, 15), (5, 23), (7, 31)]
  explicit = _values(
    num_decoder_layers=8,
    kd_teacher_parameters_path=str(teacher),
    kd_teacher_model_name="tiny",
    kd_teacher_overrides="num_decoder_layers=32",
    kd_layer_indices="0,7",
    kd_teacher_layer_indices="2,30",
  )
  assert pyconfig.feature_layer_pairs(explicit) == [(0, 2), (7, 30)]


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"kd_beta": 0.0, "kd_beta_end": 0.5, "kd_beta_schedule": "linear"}, "kd_beta: 0 with kd_beta_end > 0"),
    ({"kd_beta_schedule": "cosine"}, "kd_beta_end: required by kd_beta_schedule=cosine"),
    ({"kd_layer_indices": "0,5"}, "kd_layer_indices: layer 5 is out of range for a 2-layer model"),
    ({"kd_layer_indices": "0,1", "kd_teacher_layer_indices": "1"}, "kd_teacher_layer_indices: 1 layers given for 2"),
    ({"kd_beta": 0.0, "kd_feature_loss_type": "l2"}, "kd_feature_loss_type: has no effect with kd_beta=0"),
    ({"kd_feature_loss_type": "l1"}, "kd_feature_loss_type: expected one of cosine, l2"),
  ],
)
def test_feature_validation_errors(overrides, message):
  with pytest.raises(ConfigError) as info:
    _values(**overrides)
  assert message in str(info.value)


def test_width_mismatch_without_projection_is_an_error(tmp_path):
  with pytest.raises(ConfigError, match="student width 32 differs from teacher width 64"):
    _values(
      kd_teacher_parameters_path=str(tmp_path),
      kd_teacher_model_name="tiny",
      kd_teacher_overrides="emb_dim=64",
      kd_feature_projection=False,
    )


def test_projection_learns_a_known_linear_map():
  rng = np.random.default_rng(0)
  config = pyconfig.from_dict(
    {
      "model_name": "tiny",
      "use_kd": True,
      "kd_beta": 1.0,
      "kd_feature_loss_type": "l2",
      "kd_layer_indices": "1",
      "kd_teacher_layer_indices": "1",
    }
  )
  true_map = jnp.asarray(rng.normal(size=(32, 48)), jnp.float32)
  student = jnp.asarray(rng.normal(size=(2, 4, 16, 32)), jnp.float32)  # [layers, B, L, D]
  teacher = jnp.einsum("nbld,de->nble", student, true_map)
  weights = jnp.ones(4 * 16)
  alignment = pyconfig.feature_alignment(config)
  loss = lambda p: feature_head.feature_loss_sum(alignment, student, teacher, p, weights, None) / weights.sum()
  projection = jnp.zeros((1, 32, 48))
  tx = optax.adam(0.05)
  opt = tx.init(projection)
  for _ in range(400):
    grad = jax.grad(loss)(projection)
    updates, opt = tx.update(grad, opt)
    projection = optax.apply_updates(projection, updates)
  assert float(loss(projection)) < 1e-3 * float(loss(jnp.zeros_like(projection)))
  np.testing.assert_allclose(projection[0], true_map, atol=0.05)


def test_scan_on_and_off_give_the_same_feature_loss():
  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "use_kd": True, "kd_beta": 1.0})
  _, params, _ = model_lib.split_params(model_lib.Decoder(config, nnx.Rngs(0)))
  tokens = np.random.default_rng(1).integers(0, 320, (2, 12))
  weights = jnp.ones(24)
  alignment = pyconfig.feature_alignment(config)
  projection = feature_head.init_head(alignment, 0, config.weight_dtype)[feature_head.PROJECTION]
  losses = []
  for scan in (True, False):
    variant = dataclasses.replace(config, scan_layers=scan)
    model = model_lib.bind(nnx.graphdef(model_lib.abstract_model(variant)), params)
    feats = model(tokens, features="attention_output").features
    losses.append(feature_head.feature_loss_sum(alignment, feats, feats * 0.5 + 1.0, projection, weights, None))
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


def _step_memory(config):
  mesh = sharding.create_mesh(config)
  alignment = pyconfig.feature_alignment(config)
  layout = make_layout(config, mesh, alignment)
  teacher = LiveTeacher(config, layout.graphdef, layout.param_shardings)
  loss_fn = make_loss_fn(config, layout.graphdef, teacher, alignment)
  step = make_train_step(config, layout.tx, loss_fn, step_metrics(config, alignment is not None))
  shape = jax.ShapeDtypeStruct((4, 64), jnp.int32)
  batch = {k: shape for k in ("inputs", "inputs_position", "inputs_segmentation", "targets", "targets_segmentation")}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), layout.abstract_state)
  lowered = jax.jit(step).lower(abstract, abstract["params"], batch)
  outputs = jax.eval_shape(step, abstract, abstract["params"], batch)[1]
  return lowered.compile().memory_analysis().temp_size_in_bytes, set(outputs)


def test_beta_zero_compiles_the_logit_only_step():
  base = {"model_name": "tiny", "use_kd": True, "max_target_length": 64, "dtype": "float32"}
  logit_only, logit_keys = _step_memory(pyconfig.from_dict(base))
  beta_zero, zero_keys = _step_memory(pyconfig.from_dict({**base, "kd_beta": 0.0}))
  with_features, feature_keys = _step_memory(pyconfig.from_dict({**base, "kd_beta": 0.5}))
  assert beta_zero == logit_only and zero_keys == logit_keys
  assert "kd/feature_loss_sum" not in zero_keys and "kd/feature_loss_sum" in feature_keys
  assert with_features > logit_only


def test_feature_loss_falls_with_a_deeper_wider_teacher(tmp_path):
  teacher = ["emb_dim=64", "num_decoder_layers=4", "mlp_dim=128"]
  run_train(tmp_path, *TINY, *teacher, "run_name=teacher", "steps=20", "learning_rate=5e-3", "checkpoint_period=20")
  run_train(
    tmp_path,
    *TINY,
    "run_name=student",
    "steps=20",
    "learning_rate=5e-3",
    "use_kd=true",
    f"kd_teacher_parameters_path={tmp_path}/teacher/checkpoints/20",
    "kd_teacher_model_name=tiny",
    f"kd_teacher_overrides={','.join(teacher)}",
    "kd_beta=1.0",
    "kd_feature_loss_type=cosine",
  )
  records = [r for r in read_metrics(tmp_path / "student") if "kd/feature_loss" in r]
  losses = [r["kd/feature_loss"] for r in records]
  assert len(losses) == 20 and np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
  assert records[-1]["kd/beta"] == 1.0
  assert records[-1]["loss"] == pytest.approx(
    0.5 * records[-1]["kd/hard_loss"] + 0.5 * records[-1]["kd/soft_loss"] + records[-1]["kd/feature_loss"], rel=1e-5
  )


def test_projection_is_a_student_parameter_left_out_of_the_hugging_face_tensors():
  from MaxText.model import hf_weights

  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "use_kd": True, "kd_beta": 1.0})
  layout = make_layout(config, sharding.create_mesh(config), pyconfig.feature_alignment(config))
  state = init_state(config, layout)
  head, axes = state["kd_head"], feature_head.head_logical_axes()
  assert head["kd_projection"].shape == (2, 32, 32) and axes["kd_projection"][0] == "layers"
  assert "kd_projection" not in state["params"]  # the decoder's parameters hold no distillation parameter
  exported = hf_weights.params_to_hf(state["params"], config)
  assert not any("projection" in name for name in exported)
  assert exported["model.layers.1.mlp.down_proj.weight"].shape == (32, 64)


def test_a_feature_kd_run_resumes_exactly_with_its_head(tmp_path):
  run = [*TINY, "run_name=f", "steps=4", "checkpoint_period=2", "learning_rate=5e-3", "use_kd=true", "kd_beta=1.0"]
  run_train(tmp_path, *run)
  straight = train_losses(tmp_path / "f")
  assert os.path.isdir(tmp_path / "f" / "checkpoints" / "4" / "kd_head")  # the head is saved with the student
  shutil.rmtree(tmp_path / "f" / "checkpoints" / "4")
  proc = run_train(tmp_path, *run)
  assert "resumed from checkpoint at step 2" in proc.stdout
  resumed = train_losses(tmp_path / "f")
  for step in (3, 4):
    assert abs(resumed[step] - straight[step]) <= 1e-6 * abs(straight[step]), step
