"""`profiler_steps`: a jax.profiler trace of that many training steps, written where TensorBoard's Profile
tab finds it (<run>/tensorboard/plugins/profile/<time>/<host>.xplane.pb).

The first `skip_first_n_steps_for_profiler` steps after a (re)start are skipped, so the trace shows
steady-state steps rather than compilation. A run folder in a bucket gets a trace written locally and
uploaded when it stops (the profiler writes local files)."""

from __future__ import annotations

import os
import tempfile

import jax

from MaxText.config import storage


class StepProfiler:
  def __init__(self, config, run_dir: str, start_step: int):
    self.count = config.profiler_steps
    self.first = start_step + config.skip_first_n_steps_for_profiler + 1
    self.last = min(self.first + self.count - 1, config.steps)
    self.target = storage.join(run_dir, "tensorboard")
    self.local = tempfile.mkdtemp(prefix="profile-") if storage.is_remote(run_dir) else self.target
    self.active = False

  def before_step(self, step: int) -> None:
    if self.count and step == self.first and self.first <= self.last:
      jax.profiler.start_trace(self.local)
      self.active = True

  def after_step(self, step: int, outputs) -> None:
    """Stops after the last profiled step, once its device work (`outputs`) is done."""
    if self.active and step == self.last:
      jax.block_until_ready(outputs)
      self.stop()
      if jax.process_index() == 0:
        print(f"profiled steps {self.first}-{self.last} into {self.target} (TensorBoard: Profile tab)", flush=True)

  def stop(self) -> None:
    if not self.active:
      return
    jax.profiler.stop_trace()
    self.active = False
    if self.local != self.target:
      for root, _, files in os.walk(self.local):
        for name in files:
          relative = os.path.relpath(os.path.join(root, name), self.local)
          storage.copy(os.path.join(root, name), storage.join(self.target, *relative.split(os.sep)))
