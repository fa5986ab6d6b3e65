"""The quickstart study end to end at a toy size, and the real-hardware recipes' configs."""

import glob
import json
import os
import subprocess
import sys

import pytest

from MaxText import pyconfig
from tests.conftest import REPO, xla_flags

STUDENTS = ("ce_only", "alpha_02", "alpha_04", "alpha_06", "alpha_08", "alpha_1", "hard_alpha_1")


def _run_toy_study(out_dir):
  env = {
    **os.environ,
    "PY": sys.executable,
    "XLA_FLAGS": xla_flags(1),
    "JAX_PLATFORMS": "cpu",
  }
  return subprocess.run(
    ["bash", "quickstart/run_all.sh", "--steps", "2", "--out", str(out_dir), "--toy"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_run_all_at_toy_size_produces_every_run_the_figure_and_the_table(tmp_path):
  proc = _run_toy_study(tmp_path)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  for run in ("quickstart_teacher", *STUDENTS):
    assert os.path.isdir(tmp_path / run / "checkpoints" / "2"), run
  assert (tmp_path / "example_training.png").stat().st_size > 10_000
  table = (tmp_path / "results.md").read_text()
  assert "quickstart_teacher (teacher)" in table and all(f"| {s} |" in table for s in STUDENTS)
  again = _run_toy_study(tmp_path)  # a second call reuses everything
  assert again.returncode == 0 and again.stdout.count("done already") == 8


def test_study_and_recipe_configs_parse_against_the_real_keys(tmp_path):
  tokenizer = tmp_path / "tokenizer.json"
  tokenizer.write_text("{}")
  teacher = tmp_path / "teacher_ckpt"
  teacher.mkdir()
  ymls = sorted(
    glob.glob(os.path.join(REPO, "configs", "*.yml")) + glob.glob(os.path.join(REPO, "quickstart", "*.yml"))
  )
  assert len(ymls) >= 9
  for path in ymls:
    with open(path, encoding="utf-8") as f:
      text = f.read()
    overrides = {"tokenizer_path": str(tokenizer)}  # the real paths exist only on the target machines
    if "use_kd: true" in text:
      overrides["kd_teacher_parameters_path"] = str(teacher)
    if "load_parameters_path:" in text:
      overrides["load_parameters_path"] = str(teacher)
    config = pyconfig.initialize([path], overrides)
    assert config.vocab_size >= 2048
    if "llama3_8b_to_1b" in path:
      teacher_config = pyconfig.teacher_config(config)
      assert (config.model_name, config.emb_dim, teacher_config.emb_dim, teacher_config.num_decoder_layers) == (
        "llama3.2-1b",
        2048,
        4096,
        32,
      )


@pytest.mark.slow
def test_progressive_chain_at_toy_size_prunes_each_stage_from_the_last_and_resumes(tmp_path):
  env = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "quickstart/progressive.py", "--toy", "--steps", "2", "--stage_steps", "2"]
  cmd += ["--out", str(tmp_path)]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = [line.split(" | ") for line in (tmp_path / "progressive.md").read_text().splitlines()[2:]]
  assert [r[0].strip("| ") for r in rows] == ["teacher", "stage1", "stage2", "one_shot"]
  sizes = [int(r[3].replace(",", "")) for r in rows]
  assert sizes[0] > sizes[1] > sizes[2] == sizes[3]  # each stage smaller; one shot lands on the last shape
  report = json.loads((tmp_path / "pruned_stage2" / "model_config.json").read_text())
  assert report["num_decoder_layers"] == 4 and report["emb_dim"] == 128  # stage2 pruned stage1's 4 layers
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "== train" not in again.stdout and "== prune" not in again.stdout
