"""Two processes joined by jax.distributed on 127.0.0.1 train like one process with the same devices: plain
CE, online KD from a live teacher, and offline KD from a top-k cache (each host reading its share)."""

import sys

import pytest

from tests.conftest import TINY, TRAIN, free_port, read_metrics, run_processes, run_train, train_losses

COMMON = [
  *TINY[:3],
  "per_device_batch_size=2",
  "log_period=1",
  "steps=3",
  "dataset_type=synthetic",
  "learning_rate=3e-3",
  "checkpoint_period=3",
  "ici_fsdp_parallelism=2",
  "async_checkpointing=false",
]
TOLERANCE = 1e-5  # relative: the same sums over the global batch, reduced in another order


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """A random tiny teacher with a larger init than the student's (a peaked teacher, far from uniform)."""
  from flax import nnx

  from MaxText import pyconfig
  from MaxText.model import decoder, params_io

  path = str(tmp_path_factory.mktemp("teacher") / "ckpt")
  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "init_std": 0.3})
  params_io.save_params(path, decoder.split_params(decoder.Decoder(config, nnx.Rngs(7)))[1])
  return path


def _one_and_two_processes(tmp_path, *overrides):
  """Records of the same run on 4 devices of one process and on 2 processes of 2 devices each."""
  common = [*COMMON, *overrides]
  run_train(tmp_path, *common, "run_name=single", "dcn_data_parallelism=1", "ici_data_parallelism=2", devices=4)
  distributed = ["jax_distributed_initialize=true", f"coordinator_address=127.0.0.1:{free_port()}", "num_processes=2"]
  train = [sys.executable, TRAIN, "base.yml", f"base_output_directory={tmp_path}", "run_name=multi", *common]
  outputs = run_processes([[*train, *distributed, f"process_id={i}"] for i in range(2)], devices_each=2)
  assert "over 4 cpu devices, 2 process(es)" in outputs[0]
  return read_metrics(tmp_path / "single"), read_metrics(tmp_path / "multi")


def _assert_same(single, multi, keys):
  assert [r["step"] for r in multi] == [r["step"] for r in single] == [1, 2, 3]
  for one, two in zip(single, multi, strict=True):
    for key in keys:
      assert abs(one[key] - two[key]) <= TOLERANCE * abs(one[key]), (one["step"], key)


def test_two_processes_match_one_process(tmp_path):
  single, multi = _one_and_two_processes(tmp_path)
  _assert_same(single, multi, ["loss"])
  ckpt = tmp_path / "multi" / "checkpoints" / "3"
  assert (ckpt / "data_iter" / "process_0-of-2.json").is_file()
  assert (ckpt / "data_iter" / "process_1-of-2.json").is_file()
  assert sorted(train_losses(tmp_path / "multi")) == [1, 2, 3]


def test_online_kd_on_two_processes_matches_one_process(tmp_path, teacher_dir):
  kd = ["use_kd=true", f"kd_teacher_parameters_path={teacher_dir}", "kd_alpha=0.5", "kd_temperature=2.0"]
  single, multi = _one_and_two_processes(tmp_path, *kd)
  _assert_same(single, multi, ["loss", "kd/soft_loss", "kd/kl_div_T1", "kd/hard_loss"])


def test_offline_kd_on_two_processes_matches_one_process(tmp_path, teacher_dir):
  from MaxText import pyconfig
  from MaxText import save_top_k_teacher_logits as save_job

  cache = str(tmp_path / "cache")
  keys = {"model_name": "tiny", "dtype": "float32", "max_target_length": 32, "per_device_batch_size": 4, "steps": 3}
  keys |= {"dataset_type": "synthetic", "use_kd": True, "kd_teacher_parameters_path": teacher_dir}
  keys |= {"kd_offline_output_dir": cache, "kd_offline_top_k": 8, "kd_offline_logits_dtype": "float32"}
  save_job.save(pyconfig.from_dict(keys))  # 12 sequences: each process reads every other one of each epoch
  offline = ["use_kd=true", f"kd_offline_data_dir={cache}", "kd_alpha=0.5"]
  single, multi = _one_and_two_processes(tmp_path, *offline)
  _assert_same(single, multi, ["loss", "kd/soft_loss", "kd/kl_div_T1"])
