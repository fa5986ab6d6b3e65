"""kd_teacher_dtype=int8: the teacher's matmul weights held as int8 with one scale per output channel,
dequantized where each matmul reads them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import pyconfig
from MaxText.model import decoder, int8_weights
from tests.conftest import TINY, read_metrics, run_train


def _tiny_params(seed=7):
  from flax import nnx

  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "init_std": 0.3})
  graphdef, params, _ = decoder.split_params(decoder.Decoder(config, nnx.Rngs(seed)))
  return config, graphdef, params


def test_each_weight_is_rounded_to_the_nearest_step_of_its_output_channel():
  w = jax.random.normal(jax.random.key(0), (3, 16, 4, 8)) * jnp.arange(1, 9)  # channels of different ranges
  q = int8_weights.quantize(w, (1,))
  scale = np.max(np.abs(np.asarray(w)), axis=1, keepdims=True) / 127.0
  np.testing.assert_allclose(np.asarray(q.scale), scale, rtol=1e-6)
  assert q.values.dtype == jnp.int8 and q.scale.shape == (3, 1, 4, 8)
  error = np.abs(np.asarray(q.astype(jnp.float32)) - np.asarray(w))
  assert np.all(error <= scale / 2 * (1 + 1e-5))  # round to nearest: at most half a step
  assert int(np.max(np.abs(np.asarray(q.values)))) == 127  # each channel's largest weight uses the full range


def test_the_int8_decoder_is_the_float_decoder_on_the_dequantized_weights():
  config, graphdef, params = _tiny_params()
  quantized = int8_weights.quantize_params(params)
  is_int8 = lambda x: isinstance(x, int8_weights.Int8Weight)
  dequantized = jax.tree.map(lambda x: x.astype(jnp.float32) if is_int8(x) else x, quantized, is_leaf=is_int8)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, config.vocab_size)
  held = decoder.bind(graphdef, quantized).logits(tokens)
  reference = decoder.bind(graphdef, dequantized).logits(tokens)
  np.testing.assert_allclose(np.asarray(held), np.asarray(reference), rtol=1e-5, atol=1e-5)
  full = decoder.bind(graphdef, params).logits(tokens)
  log_p, log_q = jax.nn.log_softmax(full), jax.nn.log_softmax(held)
  kl = float(jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)))
  assert 0 < kl < 1e-2  # the int8 teacher's distribution stays close to the float one's (1.0e-3 nats measured)
  assert decoder.parameter_count(quantized) == decoder.parameter_count(params)


@pytest.mark.parametrize("model_name", ["llama3.1-8b", "llama3.1-70b"])
def test_an_int8_teacher_holds_about_half_the_bytes_of_bfloat16(model_name):
  config = pyconfig.from_dict({"model_name": model_name, "weight_dtype": "bfloat16"})
  _, abstract, _ = decoder.split_params(decoder.abstract_model(config))
  ratio = int8_weights.nbytes(int8_weights.abstract_params(abstract)) / int8_weights.nbytes(abstract)
  assert 0.5 < ratio < 0.501  # 1 byte of 2 per weight, plus one float32 scale per output channel


def test_an_int8_teacher_distills_on_a_sharded_mesh_as_an_ensemble_member_and_for_the_save_job(tmp_path):
  from array_record.python.array_record_module import ArrayRecordReader

  from MaxText import save_top_k_teacher_logits as save_job
  from MaxText.config.teachers import TeacherSpec
  from MaxText.data import teacher_cache
  from MaxText.distill.teacher import load_live_teacher
  from MaxText.model import params_io
  from MaxText.parallel import sharding

  config, _, params = _tiny_params()
  teacher = str(tmp_path / "teacher")
  params_io.save_params(teacher, params)
  run = [*TINY, "steps=2", "dataset_type=synthetic", "use_kd=true", f"kd_teacher_parameters_path={teacher}"]
  run += ["kd_alpha=0.5", "ici_fsdp_parallelism=4"]
  float_run = run_train(tmp_path, *run, "run_name=float", "kd_teacher_dtype=bfloat16", devices=4)
  int8_run = run_train(tmp_path, *run, "run_name=int8", "kd_teacher_dtype=int8", devices=4)
  assert "int8 matmul weights" in int8_run.stdout and "int8 matmul weights" not in float_run.stdout
  first = {name: read_metrics(tmp_path / name)[0] for name in ("float", "int8")}
  assert abs(first["int8"]["kd/soft_loss"] - first["float"]["kd/soft_loss"]) < 0.02 * first["float"]["kd/soft_loss"]

  # an ensemble member in int8 beside one in float32, on the (one-device) mesh
  members = [TeacherSpec("a", teacher, "tiny", "", "int8"), TeacherSpec("b", teacher, "tiny", "", "float32")]
  ensemble = pyconfig.from_dict({"model_name": "tiny", "use_kd": True, "kd_teachers": tuple(members)})
  _, (held_a, held_b) = load_live_teacher(ensemble, sharding.create_mesh(ensemble))
  assert isinstance(held_a["layers"]["query"], int8_weights.Int8Weight) and held_a["layers"]["query"].dtype == jnp.int8
  assert held_b["layers"]["query"].dtype == jnp.float32

  # the offline save job with an int8 teacher: the cached top-1 is mostly the float teacher's
  tops = {}
  for kind in ("float32", "int8"):
    out = str(tmp_path / f"cache-{kind}")
    keys = {"model_name": "tiny", "dtype": "float32", "max_target_length": 32, "per_device_batch_size": 4}
    keys |= {"steps": 2, "dataset_type": "synthetic", "use_kd": True, "kd_teacher_parameters_path": teacher}
    keys |= {"kd_teacher_dtype": kind, "kd_offline_output_dir": out, "kd_offline_top_k": 4}
    save_job.save(pyconfig.from_dict({**keys, "kd_offline_logits_dtype": "float32"}))
    run_keys = {k: v for k, v in keys.items() if not k.startswith(("kd_teacher", "kd_offline_output"))}
    view = teacher_cache.open_for_run(pyconfig.from_dict({**run_keys, "kd_offline_data_dir": out}))
    rows = [view.layout.decode(r) for f in view.shard_files for r in ArrayRecordReader(f).read_all()]
    tops[kind] = np.concatenate([r["teacher_ids"][..., 0].ravel() for r in rows])
  assert np.mean(tops["int8"] == tops["float32"]) > 0.9
