"""End to end through MaxText/train.py as a subprocess: outputs, resume, sharding, faults."""

import glob
import os
import re
import shutil

import numpy as np

from tests.conftest import TINY, kill_and_resume, read_metrics, run_train, train_losses


def test_two_steps_write_checkpoint_tensorboard_and_jsonl(tmp_path):
  proc = run_train(tmp_path, *TINY, "run_name=smoke", "steps=2", "eval_interval=2", "eval_steps=1")
  run_dir = tmp_path / "smoke"
  assert (run_dir / "checkpoints" / "2" / "params").is_dir()
  assert (run_dir / "checkpoints" / "2" / "data_iter" / "process_0-of-1.json").is_file()
  assert glob.glob(str(run_dir / "tensorboard" / "events.out.tfevents.*"))
  records = read_metrics(run_dir)
  assert [r["step"] for r in records if "loss" in r] == [1, 2]
  train = records[0]
  for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "tflops_per_device", "perplexity"):
    assert np.isfinite(train[key]), key
  assert abs(train["loss"] - np.log(320)) < 0.2  # an untrained model is near-uniform over the vocabulary
  assert any("eval/loss" in r for r in records)
  assert "parameters" in proc.stdout and "keys that differ from base.yml" in proc.stdout
  assert "remat_policy: auto -> none (" in proc.stdout  # a tiny model's activations fit: nothing recomputed


def test_resume_continues_exactly_with_data_order(tmp_path):
  steps = ["steps=8", "checkpoint_period=4", "learning_rate=3e-3"]
  run_train(tmp_path, *TINY, "run_name=straight", *steps)
  straight = train_losses(tmp_path / "straight")
  # the same run, but a new process resumes from step 4 (its later checkpoint removed)
  run_train(tmp_path, *TINY, "run_name=resumed", *steps)
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "8")
  os.remove(tmp_path / "resumed" / "metrics.jsonl")
  proc = run_train(tmp_path, *TINY, "run_name=resumed", *steps)
  assert "resumed from checkpoint at step 4" in proc.stdout
  resumed = train_losses(tmp_path / "resumed")
  assert sorted(resumed) == [5, 6, 7, 8]
  for step in resumed:
    assert abs(resumed[step] - straight[step]) <= 1e-6 * abs(straight[step]), step


def test_a_run_killed_while_an_async_checkpoint_is_written_resumes_bit_for_bit(tmp_path):
  run = [*TINY, "async_checkpointing=true", "steps=10", "checkpoint_period=2", "learning_rate=3e-3"]
  straight, resumed, stdout = kill_and_resume(tmp_path, *run, kill_after_save=6)
  assert int(re.search(r"resumed from checkpoint at step (\d+)", stdout).group(1)) in (4, 6)  # 6 if it landed
  assert sorted(resumed) == list(range(1, 11)) and resumed == straight


def test_eight_device_mesh_matches_one_device(tmp_path):
  common = [
    *TINY[:3],
    "log_period=1",
    "steps=5",
    "enable_checkpointing=false",
    "learning_rate=3e-3",
    "emb_dim=64",
    "num_query_heads=4",
    "num_kv_heads=2",
    "mlp_dim=128",
  ]
  run_train(tmp_path, *common, "run_name=one", "per_device_batch_size=8", devices=1)
  proc = run_train(
    tmp_path,
    *common,
    "run_name=mesh",
    "per_device_batch_size=1",
    "ici_data_parallelism=2",
    "ici_fsdp_parallelism=2",
    "ici_tensor_parallelism=2",
    devices=8,
  )
  assert "mesh: {'data': 2, 'fsdp': 2, 'tensor': 2} over 8 cpu devices" in proc.stdout
  one, mesh = train_losses(tmp_path / "one"), train_losses(tmp_path / "mesh")
  assert sorted(one) == sorted(mesh) == [1, 2, 3, 4, 5]
  for step in one:
    assert abs(one[step] - mesh[step]) <= 1e-5 * abs(one[step]), (step, one[step], mesh[step])
  assert one[5] < one[1]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
  common = [*TINY, "steps=3", "enable_checkpointing=false", "learning_rate=3e-3", "packing=true"]
  run_train(tmp_path, *common, "run_name=big")
  run_train(tmp_path, *common, "run_name=accum", "gradient_accumulation_steps=2")
  big, accum = train_losses(tmp_path / "big"), train_losses(tmp_path / "accum")
  for step in big:
    assert abs(big[step] - accum[step]) <= 1e-5 * abs(big[step])


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
  proc = run_train(
    tmp_path,
    *TINY,
    "run_name=nan",
    "steps=6",
    "checkpoint_period=1",
    "learning_rate=1e30",
    "gradient_clipping_threshold=0",
    "warmup_steps_fraction=0",
    check=False,
  )
  assert proc.returncode == 1
  assert "not finite" in proc.stderr and "every checkpoint on disk was saved after a finite step" in proc.stderr
  saved = sorted(int(p) for p in os.listdir(tmp_path / "nan" / "checkpoints") if p.isdigit())
  assert saved and saved[-1] < 6
  # the newest checkpoint left behind restores and holds finite parameters, as large as the stop says
  restored = _restore_params(tmp_path / "nan" / "checkpoints" / str(saved[-1]))
  assert all(np.isfinite(np.asarray(x)).all() for x in restored)
  largest = max(float(np.max(np.abs(np.asarray(x)))) for x in restored)
  assert f"Checkpoints kept: step {saved[-1]} (loss " in proc.stderr
  assert f"largest |parameter| {largest:.3g})" in proc.stderr and "holds parameters over 100x" in proc.stderr


def test_a_new_run_continues_a_saved_step_with_load_full_state_path_and_a_stop_names_the_step(tmp_path):
  common = [*TINY, "checkpoint_period=2"]
  run_train(tmp_path, *common, "run_name=a", "steps=6")
  run_train(tmp_path, *common, "run_name=b", "steps=6", f"load_full_state_path={tmp_path}/a/checkpoints/4")
  a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
  assert sorted(b) == [5, 6] and all(b[step] == a[step] for step in b)  # parameters, optimizer and data position
  # run a resumed at a learning rate that blows its parameters up: the stop names a step saved before that
  proc = run_train(tmp_path, *common, "run_name=a", "steps=12", "learning_rate=1e6", check=False)
  assert proc.returncode == 1 and "(not finite)" in proc.stderr
  assert "step 6 (saved before this run resumed)" in proc.stderr
  assert f"load_full_state_path={tmp_path}/a/checkpoints/6 and a lower learning_rate" in proc.stderr
  proc = run_train(tmp_path, *common, "run_name=c", f"load_full_state_path={tmp_path}/a", check=False)
  assert proc.returncode == 2 and "load_full_state_path: " in proc.stderr
  assert "is not a run's checkpoint step" in proc.stderr


def _restore_params(step_dir):
  import jax
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as checkpointer:
    return jax.tree.leaves(checkpointer.restore(os.path.join(step_dir, "params")))


def test_unreadable_data_path_and_checkpoint_are_one_line_errors(tmp_path):
  proc = run_train(tmp_path, *TINY, "steps=1", "dataset_path=/no/such/file.txt", check=False)
  assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
    "error: dataset_path: no readable files match '/no/such/file.txt'"
  )
  bogus = tmp_path / "not_a_checkpoint"
  bogus.mkdir()
  proc = run_train(tmp_path, *TINY, "steps=1", f"load_parameters_path={bogus}", check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(f"error: parameters checkpoint '{bogus}' cannot be read")


def test_load_parameters_path_fine_tunes_from_a_run(tmp_path):
  run_train(tmp_path, *TINY, "run_name=base", "steps=4", "learning_rate=3e-3")
  base_last = train_losses(tmp_path / "base")[4]
  run_train(tmp_path, *TINY, "run_name=tuned", "steps=1", f"load_parameters_path={tmp_path}/base/checkpoints/4")
  tuned_first = train_losses(tmp_path / "tuned")[1]
  assert tuned_first < np.log(320) - 0.05 and abs(tuned_first - base_last) < 0.3


def test_resume_falls_back_past_a_damaged_newest_step_and_each_step_is_logged_once(tmp_path):
  common = [*TINY, "run_name=r", "steps=6", "checkpoint_period=2", "dataset_type=synthetic"]
  run_train(tmp_path, *common)
  first = train_losses(tmp_path / "r")
  damaged = tmp_path / "r" / "checkpoints" / "6"
  for data_file in glob.glob(str(damaged / "params" / "**" / "d" / "*"), recursive=True):
    with open(data_file, "r+b") as f:
      f.truncate(10)  # as a crash or a full disk leaves it
  proc = run_train(tmp_path, *common)
  assert "checkpoint step 6 cannot be restored" in proc.stderr
  assert "resuming from step 4, the newest checkpoint that restores" in proc.stderr
  assert os.path.isdir(tmp_path / "r" / "checkpoints" / "unrestorable-6")  # kept, never deleted
  records = [r for r in read_metrics(tmp_path / "r") if "loss" in r]
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # steps 5 and 6 appear once, from the resumed run
  for step in (5, 6):
    assert records[step - 1]["loss"] == first[step], step  # the replayed steps are bitwise the same


def test_a_run_folder_of_another_run_or_holding_a_users_file_is_refused_and_left_as_it_is(tmp_path):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep me")
  proc = run_train(tmp_path, *TINY, "run_name=mine", "steps=1", check=False)
  assert proc.returncode == 2 and "holds 'notes.txt', which this job did not write" in proc.stderr
  assert os.listdir(tmp_path / "mine") == ["notes.txt"]
  run_train(tmp_path, *TINY, "run_name=small", "steps=1")
  proc = run_train(tmp_path, *TINY, "run_name=small", "steps=2", "emb_dim=64", check=False)
  assert proc.returncode == 2 and "holds another run (emb_dim=32 there, 64 here)" in proc.stderr
