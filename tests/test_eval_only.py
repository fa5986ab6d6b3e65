"""eval_only=true: a saved model scored on the eval split, equal to the training run's own eval at that step,
whether it is read from the run's checkpoint or from a Hugging Face export of it imported back."""

import json
import re
import sys

import forked_jobs
import numpy as np
import pytest
from chat_files import chat_tokenizer_folder
from conftest import REPO, TINY, read_metrics, run_train

EVAL_LINE = re.compile(r"eval_only (\S+): loss ([0-9.]+) \| perplexity ([0-9.]+) \((\d+) tokens in (\d+) batches; ")


def _convert(*args):
  proc = forked_jobs.run([sys.executable, "-m", "MaxText.convert_hf_checkpoint", *args], cwd=REPO)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _eval_only(tmp_path, *overrides):
  out = run_train(tmp_path / "never-written", "eval_only=true", *overrides)
  match = EVAL_LINE.search(out.stdout)
  assert match, out.stdout[-2000:]
  assert not (tmp_path / "never-written").exists()  # an eval-only pass writes no run folder
  return float(match.group(2)), float(match.group(3)), int(match.group(4))


@pytest.mark.slow
def test_eval_only_reproduces_the_runs_eval_from_its_checkpoint_and_from_a_converted_copy(tmp_path):
  rng = np.random.default_rng(0)
  words = ["Name", "a", "colour.", "Blue.", "Red.", "What", "is", "the", "sea?", "Water.", "Say", "hi."]
  docs = [json.dumps({"text": " ".join(rng.choice(words, size=rng.integers(4, 20)))}) for _ in range(200)]
  (tmp_path / "docs.jsonl").write_text("\n".join(docs))
  chat_tokenizer_folder(tmp_path / "tok")
  data = [
    "dataset_type=jsonl",
    f"dataset_path={tmp_path / 'docs.jsonl'}",
    "tokenizer_type=huggingface",
    f"tokenizer_path={tmp_path / 'tok'}",
    "eval_fraction=0.2",
    "eval_steps=3",
  ]
  run_train(tmp_path, *TINY, *data, "run_name=run", "steps=4", "eval_interval=4", "checkpoint_period=4")
  want = next(r for r in read_metrics(tmp_path / "run") if r["step"] == 4 and "eval/loss" in r)

  step_folder = tmp_path / "run" / "checkpoints" / "4"
  loss, perplexity, _ = _eval_only(tmp_path, *TINY, *data, f"load_parameters_path={step_folder}")
  assert abs(loss - want["eval/loss"]) <= 1e-6 * want["eval/loss"]  # printed to 6 decimals
  assert abs(perplexity - want["eval/perplexity"]) <= 1e-4 * want["eval/perplexity"]

  # the same weights through a float32 Hugging Face export and back: model and tokenizer keys come from
  # the converted folder (only the run's numerics and data keys are given)
  _convert("--to_hf", "--checkpoint", str(step_folder), "--output", str(tmp_path / "hf"))
  _convert("--hf_dir", str(tmp_path / "hf"), "--output", str(tmp_path / "imported"))
  numerics = ["dtype=float32", "max_target_length=32", "per_device_batch_size=4"]
  loss, _, _ = _eval_only(tmp_path, *numerics, *data, f"load_parameters_path={tmp_path / 'imported'}")
  assert abs(loss - want["eval/loss"]) <= 1e-5 * want["eval/loss"]


def test_eval_only_needs_a_model_and_a_teacher_for_kd(tmp_path):
  for extra, message in (
    ([], "load_parameters_path: eval_only scores a saved model"),
    (["load_parameters_path=/tmp", "use_kd=true"], "kd_teacher_parameters_path: eval_only with use_kd reports"),
  ):
    proc = run_train(tmp_path, *TINY, "eval_only=true", *extra, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1000:]
