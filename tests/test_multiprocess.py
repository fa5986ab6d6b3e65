"""Two processes joined by jax.distributed on 127.0.0.1 train like one process with the same devices."""

import os
import socket
import subprocess
import sys

from tests.conftest import REPO, TINY, TRAIN, run_train, train_losses


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


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
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        TRAIN,
        "base.yml",
        f"base_output_directory={tmp_path}",
        "run_name=multi",
        *common,
        "jax_distributed_initialize=true",
        f"coordinator_address=127.0.0.1:{port}",
        "num_processes=2",
        f"process_id={i}",
      ],
      env=env,
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outputs)
  assert "over 4 cpu devices, 2 process(es)" in outputs[0]
  single, multi = train_losses(tmp_path / "single"), train_losses(tmp_path / "multi")
  assert sorted(multi) == [1, 2, 3]
  for step in single:
    assert abs(single[step] - multi[step]) <= 1e-5 * abs(single[step])
  ckpt = tmp_path / "multi" / "checkpoints" / "3"
  assert (ckpt / "data_iter" / "process_0-of-2.json").is_file()
  assert (ckpt / "data_iter" / "process_1-of-2.json").is_file()
