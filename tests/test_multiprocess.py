"""Two processes joined by jax.distributed on 127.0.0.1 train like one process with the same devices."""

import sys

from tests.conftest import TINY, TRAIN, free_port, run_processes, run_train, train_losses


def test_two_processes_match_one_process(tmp_path):
  common = [
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
  run_train(tmp_path, *common, "run_name=single", "dcn_data_parallelism=1", "ici_data_parallelism=2", devices=4)
  distributed = ["jax_distributed_initialize=true", f"coordinator_address=127.0.0.1:{free_port()}", "num_processes=2"]
  train = [sys.executable, TRAIN, "base.yml", f"base_output_directory={tmp_path}", "run_name=multi", *common]
  outputs = run_processes([[*train, *distributed, f"process_id={i}"] for i in range(2)], devices_each=2)
  assert "over 4 cpu devices, 2 process(es)" in outputs[0]
  single, multi = train_losses(tmp_path / "single"), train_losses(tmp_path / "multi")
  assert sorted(multi) == [1, 2, 3]
  for step in single:
    assert abs(single[step] - multi[step]) <= 1e-5 * abs(single[step])
  ckpt = tmp_path / "multi" / "checkpoints" / "3"
  assert (ckpt / "data_iter" / "process_0-of-2.json").is_file()
  assert (ckpt / "data_iter" / "process_1-of-2.json").is_file()
