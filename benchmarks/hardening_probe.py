"""The cases a new user meets when a bucket is unreachable or a checkpoint is damaged: each run N times,
with its wall time and the number of lines it leaves on stderr.

  python benchmarks/hardening_probe.py [--runs 5] [--work DIR]

Cases: `base_output_directory`, `dataset_path` and `kd_teacher_parameters_path` in a bucket that cannot be
reached (on a host without a route to storage.googleapis.com; elsewhere point STORAGE_EMULATOR_HOST at a
closed port); a resume past a newest checkpoint step whose large data files were cut to half, a teacher cut
the same way, and eval_only of that teacher (the cuts leave the metadata readable, so Orbax starts reading
the arrays in parallel before the first read fails). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, os.path.join(REPO, "MaxText", "train.py"), "base.yml"]
TINY = ["model_name=tiny", "dtype=float32", "max_target_length=32", "per_device_batch_size=4", "log_period=1"]
SYNC = ["async_checkpointing=false", "checkpoint_period=2"]


def cut_data_files(folder: str) -> None:
  """Halves every data file over 10 kB of an Orbax checkpoint (a copy interrupted mid-transfer)."""
  for path in glob.glob(os.path.join(folder, "**", "ocdbt.process_0", "d", "*"), recursive=True):
    if os.path.getsize(path) > 10_000:
      os.truncate(path, os.path.getsize(path) // 2)


def cases(work: str) -> dict[str, list[str]]:
  teacher = os.path.join(work, "teacher_cut")
  return {
    "base_output_directory=gs://...": ["steps=2", "base_output_directory=gs://kd-probe-bucket/runs"],
    "dataset_path=gs://.../*.jsonl": [
      "steps=2",
      f"base_output_directory={work}/o",
      "dataset_path=gs://kd-probe-bucket/d/*.jsonl",
    ],
    "kd_teacher_parameters_path=gs://...": [
      *["steps=2", f"base_output_directory={work}/o", "use_kd=true"],
      "kd_teacher_parameters_path=gs://kd-probe-bucket/teacher",
    ],
    "resume past a truncated newest step": ["steps=6", *SYNC, f"base_output_directory={work}/o", "run_name=r"],
    "truncated teacher": [
      *["steps=2", f"base_output_directory={work}/o", "use_kd=true"],
      *[f"kd_teacher_parameters_path={teacher}", "kd_teacher_model_name=tiny"],
    ],
    "eval_only of a truncated checkpoint": [
      "eval_only=true",
      f"load_parameters_path={teacher}",
      f"base_output_directory={work}/o",
    ],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--work", default="")
  args = parser.parse_args()
  work = args.work or tempfile.mkdtemp(prefix="hardening-probe-")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  good = os.path.join(work, "good")
  subprocess.run(
    [*TRAIN, *TINY, "steps=4", *SYNC, f"base_output_directory={good}", "run_name=r"],
    env=env,
    check=True,
    capture_output=True,
  )
  shutil.copytree(os.path.join(good, "r", "checkpoints", "4"), os.path.join(work, "teacher_cut"))
  cut_data_files(os.path.join(work, "teacher_cut"))
  print("| case | exit | wall time (s) | stderr lines, each run |\n|---|---|---|---|")
  for name, extra in cases(work).items():
    times, lines, codes = [], [], set()
    for _ in range(args.runs):
      shutil.rmtree(os.path.join(work, "o"), ignore_errors=True)
      if name.startswith("resume"):  # a fresh copy of the run with its newest step cut
        shutil.copytree(good, os.path.join(work, "o"))
        cut_data_files(os.path.join(work, "o", "r", "checkpoints", "4"))
      started = time.perf_counter()
      proc = subprocess.run([*TRAIN, *TINY, *extra], env=env, capture_output=True, text=True, cwd=REPO)
      times.append(time.perf_counter() - started)
      lines.append(sum(1 for line in proc.stderr.splitlines() if line.strip()))
      codes.add(proc.returncode)
    exits, counts = "/".join(map(str, sorted(codes))), ", ".join(map(str, lines))
    print(f"| {name} | {exits} | {min(times):.1f}-{max(times):.1f} | {counts} |")


if __name__ == "__main__":
  main()
