"""profiler_steps: a jax.profiler trace of the chosen steps, where TensorBoard's Profile tab reads it."""

import glob
import os

from conftest import TINY, run_train


def test_profiler_steps_write_a_trace_of_those_steps_into_the_run_folder(tmp_path):
  out = run_train(tmp_path, *TINY, "steps=4", "profiler_steps=2", "skip_first_n_steps_for_profiler=1")
  run = tmp_path / "default_run"
  assert f"profiled steps 2-3 into {run / 'tensorboard'}" in out.stdout
  traces = glob.glob(str(run / "tensorboard" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 1000
  # off by default: no trace
  run_train(tmp_path, *TINY, "steps=2", "run_name=plain")
  assert not (tmp_path / "plain" / "tensorboard" / "plugins").exists()
