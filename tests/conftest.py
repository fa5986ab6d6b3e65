"""Shared helpers: run MaxText/train.py as a subprocess and read what it wrote."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import forked_jobs
import pytest

# The suite runs on CPU. With libtpu installed (the compile-job tests use its TPU topologies), JAX would
# otherwise probe for a TPU; and libtpu allows one process at a time unless told otherwise.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# Every process of the suite, the test processes and the jobs they start (train.py and the other entry
# points, as subprocesses), compiles for the CPU with LLVM's optimisation passes off. The suite's programs
# are tiny, so compiling is most of their time, and LLVM's passes are most of that (a tiny KD run: 19 s ->
# 9 s on 2 cores; the float64-reference file test_divergence_family.py: 186 s -> 123 s in one process).
# Every numeric check holds at its tolerance with them off, as with XLA's default compile (docs/speed.md has
# the one Python 3.12 miss, the same either way). XLA reads XLA_FLAGS once, when a process's backend starts,
# so the flag is set here, before any test module imports JAX. What users run is compiled as XLA does by
# default.
FAST_COMPILE = "--xla_backend_optimization_level=0"
_OWN_FLAGS = os.environ.get("XLA_FLAGS", "").replace(FAST_COMPILE, "").strip()
os.environ["XLA_FLAGS"] = f"{_OWN_FLAGS} {FAST_COMPILE}".strip()


def xla_flags(devices: int) -> str:
  """XLA_FLAGS of a job the suite starts: `devices` CPU devices, LLVM's optimisation passes off."""
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


def pytest_configure(config):
  """One persistent compilation cache for the run's subprocesses, none for the test processes themselves.

  Most end-to-end tests start `train.py` (and the other entry points) as subprocesses, and many of them
  compile the same tiny step: with a cache shared by every subprocess of the run (and by the xdist
  workers, which inherit this environment), only the first compiles it (a tiny train run: 10.5 s -> 6.1 s).
  The test processes keep no cache: they compile for TPU topologies too (the compile job's tests), which
  cannot be loaded back from a cache on a host without a TPU. The cache is removed when the run ends.
  """
  if "PYTEST_XDIST_WORKER" not in os.environ and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    cache = tempfile.mkdtemp(prefix="maxtext-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    # every program, not only those that took a second to compile: with LLVM's passes off most take less
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
  import jax

  jax.config.update("jax_enable_compilation_cache", False)


# The files that take longest (the sum of their tests' --durations on 2 cores), longest first. xdist hands
# out whole files (--dist loadfile) in collection order (--no-loadscope-reorder: by default it would sort
# them by their number of tests, and a file of one long test would start last and end the run alone).
LONGEST_FILES = (
  "test_lm_harness.py",
  "test_divergence_family.py",
  "test_quickstart.py",
  "test_kd_loss.py",
  "test_gguf.py",
  "test_smollm2_study.py",
  "test_train.py",
  "test_cross_tokenizer.py",
  "test_streaming.py",
  "test_train_compile.py",
  "test_kd_train.py",
  "test_speculative.py",
  "test_multiprocess.py",
  "test_cloud_storage.py",
  "test_attention_kernels.py",
  "test_hf_convert.py",
  "test_input_pipeline.py",
)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the other files keep their order


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "MaxText", "train.py")
TINY = [
  "model_name=tiny",
  "dtype=float32",
  "max_target_length=32",
  "per_device_batch_size=4",
  "log_period=1",
  "checkpoint_period=1000",
  "async_checkpointing=false",
]


def run_train(out_dir, *overrides, devices=1, check=True, yml="base.yml", timeout=300):
  env = {**os.environ, "XLA_FLAGS": xla_flags(devices), "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, TRAIN, yml, f"base_output_directory={out_dir}", *overrides]
  proc = forked_jobs.run(cmd, env=env, cwd=REPO, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


def kill_and_resume(out_dir, *overrides, kill_after_save: int):
  """A run killed (SIGKILL) right after a checkpoint save started, then the same command again; returns
  (losses of an uninterrupted run, losses of the killed-and-resumed one, the rerun's stdout)."""
  run_train(out_dir, *overrides, "run_name=straight")
  os.environ["MAXTEXT_FAULT_KILL_AFTER_SAVE"] = str(kill_after_save)
  try:
    killed = run_train(out_dir, *overrides, "run_name=killed", check=False)
  finally:
    del os.environ["MAXTEXT_FAULT_KILL_AFTER_SAVE"]
  assert killed.returncode == -9, killed.stderr[-2000:]
  rerun = run_train(out_dir, *overrides, "run_name=killed")
  return train_losses(os.path.join(out_dir, "straight")), train_losses(os.path.join(out_dir, "killed")), rerun.stdout


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(commands, devices_each: int, timeout=300) -> list[str]:
  """Runs the commands side by side (the processes of one jax.distributed job); their outputs."""
  env = {**os.environ, "XLA_FLAGS": xla_flags(devices_each), "JAX_PLATFORMS": "cpu"}
  procs = [
    subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for cmd in commands
  ]
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outputs)
  return outputs


def read_metrics(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def train_losses(run_dir):
  return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


@pytest.fixture
def tiny_config():
  from MaxText import pyconfig

  return pyconfig.from_dict({"model_name": "tiny", "dtype": "float32"})
