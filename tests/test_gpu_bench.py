"""The GPU benchmark's code paths on the CPU (benchmarks/gpu_bench.py --cpu-smoke, torch_kd_peer.py at the
same tiny shapes): every row is measured with a sane loss, the peer's loss is this project's KD objective,
the peer's models have this project's parameter counts at the seed's scale, and the table's target lines
are computed from the rows. No timing is asserted."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from benchmarks import gpu_bench
from MaxText import pyconfig
from MaxText.losses.logit_kl import kl_to_teacher_logits
from MaxText.model import decoder as model_lib
from tests.conftest import REPO

torch = pytest.importorskip("torch")
peer = pytest.importorskip("benchmarks.torch_kd_peer")


def test_the_cpu_smoke_run_measures_every_row_with_a_sane_loss(tmp_path):
  # as a job the suite starts (conftest: compiled with LLVM's passes off, half the time of in-process)
  out = tmp_path / "rows.jsonl"
  script = os.path.join(REPO, "benchmarks", "gpu_bench.py")
  args = ["--cpu-smoke", "--batches", "1", "--steps", "1", "--out", str(out)]
  subprocess.run([sys.executable, script, *args], cwd=REPO, check=True, capture_output=True, timeout=600)
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["row"] for r in rows] == list(gpu_bench.ROWS)
  vocab = gpu_bench.PRESETS["cpu-smoke"].student["vocab_size"]
  for r in rows:
    assert r["tokens_per_s"] > 0 and r["program_gib"] > 0, r
    if r["row"] == "teacher forward":
      assert r["loss_per_token"] is None
    elif r["row"] == "CE step":  # a fresh model on uniform random tokens: cross-entropy near log(vocab)
      assert abs(r["loss_per_token"] - math.log(vocab)) < 0.3, r
    else:  # 0.5 CE + 0.5 T^2 KL between two fresh models: finite, CE's half plus a KL well under log(vocab)
      assert 0.5 * math.log(vocab) - 0.3 < r["loss_per_token"] < math.log(vocab), r


def test_the_peers_loss_is_the_projects_kd_objective():
  rng = np.random.default_rng(0)
  student, teacher = (rng.normal(0, 2, (6, 50)).astype(np.float32) for _ in range(2))
  labels = rng.integers(0, 50, 6)
  for temperature in (1.0, 2.0):
    got = peer.kd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), 0.5, temperature)
    # float64 definitions: CE on labels; KL(teacher || student) at T, times T^2
    log_q = lambda x, t=temperature: x / t - np.log(np.exp(x / t).sum(-1, keepdims=True))
    s64, t64 = student.astype(np.float64), teacher.astype(np.float64)
    ce = -np.mean(log_q(s64 * temperature)[np.arange(6), labels])
    kl = np.mean((np.exp(log_q(t64)) * (log_q(t64) - log_q(s64))).sum(-1))
    np.testing.assert_allclose(float(got), 0.5 * ce + 0.5 * temperature**2 * kl, rtol=1e-5)
    projects_kl = np.mean(kl_to_teacher_logits(student, teacher, temperature)[0])  # the KD step's own KL
    np.testing.assert_allclose(kl, projects_kl, rtol=1e-5)


def test_the_peers_models_have_the_projects_parameter_counts_at_the_seeds_scale():
  preset = gpu_bench.PRESETS["h200"]
  student, teacher = peer.hf_models(preset, "meta")  # shapes only
  config = pyconfig.from_dict({**gpu_bench.student_keys(preset, 1, "full"), "attention": "dot_product"})
  teacher_config = pyconfig.from_dict({"model_name": preset.teacher_model})
  for hf, ours in ((student, config), (teacher, teacher_config)):
    abstract = jax.eval_shape(lambda c=ours: model_lib.split_params(model_lib.Decoder(c, nnx.Rngs(0)))[1])
    assert sum(p.numel() for p in hf.parameters()) == model_lib.parameter_count(abstract)
  assert student.config.tie_word_embeddings and not teacher.config.tie_word_embeddings  # llama3.2-1b ties


def test_the_peer_runs_its_rows_at_the_tiny_shapes():
  rows = peer.main(["--preset", "cpu-smoke", "--batches", "1", "--steps", "1"])
  assert {r["row"] for r in rows} >= {"CE step", "KD step: forward KL, alpha 0.5, T 1", "teacher forward"}
  assert all(r["tokens_per_s"] > 0 for r in rows)


def test_the_table_puts_both_frameworks_side_by_side_and_checks_the_targets():
  ms = {"CE step": 100.0, "KD step: forward KL, alpha 0.5, T 1": 180.0, "teacher forward": 60.0}
  ours = [
    {"framework": "maxtext-kd (jax)", "row": r, "shape": "4 x 8192", "median_ms": t, "tokens_per_s": 32768 / t * 1e3}
    | {"mfu": 0.5, "program_gib": 10.0}
    for r, t in ms.items()
  ]
  theirs = [
    {"framework": "pytorch", "row": "KD step: forward KL, alpha 0.5, T 1", "shape": "4 x 8192"}
    | {"tokens_per_s": 32768 / 0.3, "process_peak_gib": 90.0}
  ]
  table = gpu_bench.side_by_side(ours + theirs)
  assert "KD step / (CE step + teacher forward) = 1.125 (target <= 1.15)" in table
  assert "KD tokens/s / PyTorch's best KD step = 1.67x (target >= 1.3x)" in table
  assert "| KD step: forward KL, alpha 0.5, T 1 | 4 x 8192 | 182,044 | 50.0% | 10.0 | 109,227 | 90.0 | 1.67x |" in table


def test_the_profile_summary_adds_up_the_device_kernels_only():
  from benchmarks.profile_summary import kernel_times

  events = [
    {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
    {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
    {"ph": "X", "pid": 1, "name": "nvjet_gemm", "dur": 30.0},
    {"ph": "X", "pid": 1, "name": "nvjet_gemm", "dur": 20.0},
    {"ph": "X", "pid": 1, "name": "loop_fusion", "dur": 10.0},
    {"ph": "X", "pid": 2, "name": "PjitFunction", "dur": 500.0},  # host time: not a kernel
    {"ph": "i", "pid": 1, "name": "marker"},
  ]
  times, total = kernel_times(events, "/device:GPU")
  assert times == {"nvjet_gemm": (50.0, 2), "loop_fusion": (10.0, 1)} and total == 60.0
  assert list(times) == ["nvjet_gemm", "loop_fusion"]  # largest first
