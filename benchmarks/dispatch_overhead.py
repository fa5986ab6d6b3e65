"""What the trainer's loop adds between steps: the host's time per step (the next batch from the input
pipeline, moving it to the devices, the metrics, the log and the checks) against the same compiled step
called back to back.

  .venv/bin/python benchmarks/dispatch_overhead.py [--steps 100 --rounds 3]

A tiny model on the Shakespeare text, so that the step itself takes milliseconds and the loop's own time
shows. The loop's time per step is (run of 2N steps - run of N steps) / N, which cancels the compile and
the start-up; the bare step's is N calls of the trainer's jitted step on device-resident batches, waited
for once at the end. Both for log_period=1 (the main job's: the loss of every step is read, so the host
waits for each step) and log_period=10. Rounds alternate the three; the table gives each round's values.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402

default_to_cpu_without_accelerator()

import jax  # noqa: E402

from MaxText import pyconfig  # noqa: E402
from MaxText.training.runtime import to_global  # noqa: E402
from MaxText.training.trainer import Trainer  # noqa: E402

KEYS = {"model_name": "tiny", "dtype": "float32", "max_target_length": 128, "per_device_batch_size": 4}
KEYS |= {"enable_checkpointing": False, "eval_interval": 0}


def run_seconds(out: str, steps: int, log_period: int) -> float:
  """Wall time of Trainer.run for `steps` steps (its construction excluded)."""
  run = {"base_output_directory": out, "run_name": f"r{steps}_{log_period}", "steps": steps, "log_period": log_period}
  with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the loop's lines still formatted
    trainer = Trainer(pyconfig.from_dict({**KEYS, **run}))
    started = time.perf_counter()
    trainer.run()
    return time.perf_counter() - started


def bare_ms(out: str, steps: int) -> float:
  """ms per call of the trainer's compiled step, called back to back on 8 device-resident batches."""
  with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
    trainer = Trainer(pyconfig.from_dict({**KEYS, "base_output_directory": out, "run_name": "bare", "steps": steps}))
  batches = [to_global(next(trainer.train_iter), trainer.batch_sharding) for _ in range(8)]
  state = trainer.state
  with jax.set_mesh(trainer.mesh):
    state, metrics = trainer.train_step(state, trainer.teacher, batches[0])  # compile
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for i in range(steps):
      state, metrics = trainer.train_step(state, trainer.teacher, batches[i % 8])
    jax.block_until_ready((state, metrics))
  return 1e3 * (time.perf_counter() - started) / steps


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--rounds", type=int, default=3)
  args = p.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as out:
    for r in range(args.rounds):
      loop = {}
      for log_period in (1, 10):
        short = run_seconds(os.path.join(out, f"{r}"), args.steps, log_period)
        long = run_seconds(os.path.join(out, f"{r}"), 2 * args.steps, log_period)
        loop[log_period] = 1e3 * (long - short) / args.steps
      rows.append((loop[1], loop[10], bare_ms(os.path.join(out, f"{r}"), args.steps)))
      print(f"round {r + 1}: loop {rows[-1][0]:.2f} / {rows[-1][1]:.2f} ms, bare step {rows[-1][2]:.2f} ms", flush=True)
  print("\n| round | trainer loop, log_period=1 | log_period=10 | bare step | loop - bare (log 1 / 10) |")
  print("|---|---|---|---|---|")
  for r, (one, ten, bare) in enumerate(rows, 1):
    print(f"| {r} | {one:.2f} ms | {ten:.2f} ms | {bare:.2f} ms | {one - bare:.2f} / {ten - bare:.2f} ms |")
  medians = [statistics.median(column) for column in zip(*rows, strict=True)]
  print(f"| median | {medians[0]:.2f} ms | {medians[1]:.2f} ms | {medians[2]:.2f} ms | "
        f"{medians[0] - medians[2]:.2f} / {medians[1] - medians[2]:.2f} ms |")  # fmt: skip


if __name__ == "__main__":
  main()
