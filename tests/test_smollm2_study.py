"""The main job's chain on a tiny GGUF: import -> self-instruct conversations -> two pruning amounts -> CE and
KD students on the conversations -> evaluation -> export of every student -> chat in transformers; a rerun
reuses every stage."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

from conftest import REPO  # noqa: E402
from gguf_files import train_bpe, write_gguf  # noqa: E402
from test_hf_convert import _load_ours  # noqa: E402

from MaxText.model import params_io  # noqa: E402

sys.path.insert(0, REPO)  # the quickstart scripts are not a package
from quickstart import smollm2_study as study  # noqa: E402

RUNS = ("deep_ce", "deep_kd", "thin_ce", "thin_kd")
EVAL_ONLY = re.compile(r"loss ([0-9.]+) \| .*fidelity: KL\(teacher\|\|student\) ([0-9.]+) top-1 agreement ([0-9.]+)")


@pytest.mark.slow
def test_main_job_chain_on_a_tiny_gguf_exports_every_student_transformers_reproduces(tmp_path):
  tokens, merges = train_bpe(400)
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
    vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128,
  )  # fmt: skip
  write_gguf(tmp_path / "tiny.gguf", transformers.LlamaForCausalLM(config).eval(), "llama", "Q8_0", tokens, merges)
  out = tmp_path / "study"
  cmd = [sys.executable, "quickstart/smollm2_study.py", "--out", str(out), "--gguf", str(tmp_path / "tiny.gguf")]
  cmd += ["--prune", "deep:prune_num_layers=2", "thin:prune_num_layers=2,prune_mlp_dim=64", "--steps", "4"]
  cmd += ["--batch", "2", "--length", "64", "--eval_batches", "2", "--new_tokens", "4", "--max_docs", "3"]
  cmd += ["--system_prompt", "Be brief.", "--instructions", "24", "--gen_batch", "4", "--task_limit", "3"]
  cmd += ["--generation", "generation_heldout_fraction=0.4"]
  # a random model rarely writes its end-of-turn token: an eighth of the vocabulary ends a turn here
  cmd += ["generation_instruction_max_tokens=12", "decode_max_new_tokens=12", "max_prefill_predict_length=64"]
  cmd += ["generation_instruction_min_words=1", "decode_stop_tokens=" + ",".join(str(t) for t in range(0, 400, 8))]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (out / "log.txt").read_text()[-3000:]
  # the console names the log and shows each stage and the jobs' progress lines
  assert f"everything the jobs print goes to {out / 'log.txt'}" in proc.stdout
  stages = ("[1/9] import", "[3/9] conversations", "[4/9] prune: deep", "[5/9] train: thin_kd", "[7/9] tasks")
  for line in (*stages, "[8/9] export", "  tasks 5/5 thin_kd: everyday_choice "):
    assert line in proc.stdout
  assert "    conversations: shard 1/" in proc.stdout and "    deep_kd: step      4 |" in proc.stdout

  results = json.loads((out / "results.json").read_text())
  models = results["models"]
  assert set(models) == {"teacher", "pruned deep, before training", "pruned thin, before training", *RUNS}
  assert results["conversations"]["records"] > 0 and results["conversations"]["heldout_records"] > 0
  for name, model in models.items():
    conv = model["conversations"]
    assert all(np.isfinite(model[d]) for d in ("shakespeare", "python_docs")) and np.isfinite(conv["loss"])
    if name == "teacher":  # the teacher against itself: no divergence, full agreement
      assert conv["kl"] == pytest.approx(0.0, abs=1e-5) and conv["top1"] == pytest.approx(1.0, abs=1e-6)
    else:
      assert conv["kl"] > 0 and 0.0 <= conv["top1"] <= 1.0
  assert models["thin_kd"]["non_embedding"] < models["deep_kd"]["non_embedding"] < models["teacher"]["non_embedding"]
  for amount in ("deep", "thin"):  # the stated share is the stated formula: the CE student -> teacher gap
    ce, kd, teacher = (models[n]["conversations"]["loss"] for n in (f"{amount}_ce", f"{amount}_kd", "teacher"))
    assert models[f"{amount}_kd"]["gap_closed"] == pytest.approx((ce - kd) / (ce - teacher), rel=1e-9)
    best = min(results["curves"][f"{amount}_ce"], key=lambda point: point["loss"])  # and against CE's best step
    assert models[f"{amount}_ce"]["best_step"] == {"step": best["step"], "loss": best["loss"]}
    closed_best = (best["loss"] - kd) / (best["loss"] - teacher)
    assert models[f"{amount}_kd"]["gap_closed_best"] == pytest.approx(closed_best, rel=1e-9)
  # task accuracy of the teacher and every student (lm-eval, 3 records per task here) and its retention
  tasks = ["everyday_choice", "everyday_short", "cloze_shakespeare", "cloze_python_docs"]
  for name in ("teacher", *RUNS):
    accuracy = models[name]["tasks"]
    assert list(accuracy) == tasks and all(round(a * 3, 9) in (0, 1, 2, 3) for a in accuracy.values())
    mean = lambda n: sum(models[n]["tasks"].values()) / len(tasks)
    if mean("teacher"):
      assert models[name]["retention"] == pytest.approx(mean(name) / mean("teacher"), rel=1e-9)
    assert len(models[name]["chat"]["grades"]) == len(study.PROMPTS)  # every answer graded
  for name in RUNS:
    assert [c["step"] for c in results["curves"][name]] == [1, 2, 3, 4]  # every saved step evaluated
    assert results["curves"][name][-1]["loss"] == models[name]["conversations"]["loss"]
  # the text split is by document; the conversations' held-out split is its own files
  data = out / "data"
  train = set(os.listdir(data / "train"))
  assert train and not train & (
    set(os.listdir(data / "heldout_shakespeare")) | set(os.listdir(data / "heldout_python_docs"))
  )
  chats = results["chat"]
  assert set(chats) == {"prompts", "teacher", *RUNS} and all(len(chats[n]) == len(chats["prompts"]) for n in RUNS)
  penalised = results["chat_penalised"]  # the second chat table: the same prompts, a repetition penalty
  assert set(penalised) == {"prompts", "teacher", *RUNS} and results["repetition_penalty"] == 1.2
  assert all(len(models[n]["chat_penalty"]["grades"]) == len(study.PROMPTS) for n in ("teacher", *RUNS))
  assert "With repetition_penalty=1.2:" in (out / "chat.md").read_text()
  assert (out / "main_job.png").is_file() and "gap closed" in (out / "results.md").read_text()
  assert "| retention (mean accuracy / teacher's) |" in (out / "results.md").read_text()

  # every student is exported: transformers gives our logits for the KD student of the thin amount
  step_dir = params_io.latest_step_dir(str(out / "runs" / "thin_kd"))
  pruned_keys = json.loads((out / "pruned_thin" / params_io.MODEL_CONFIG_FILE).read_text())
  (tmp_path / "student_params").mkdir()
  (tmp_path / "student_params" / params_io.MODEL_CONFIG_FILE).write_text(json.dumps(pruned_keys))
  os.symlink(os.path.join(step_dir, "params"), tmp_path / "student_params" / "params")
  ours = _load_ours(tmp_path / "student_params")
  hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf" / "thin_kd", dtype=torch.float32).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(out / "hf" / "thin_kd")
  ids = hf_tok.encode("To be, or not to be", add_special_tokens=False)
  with torch.no_grad():
    reference = hf(torch.tensor([ids])).logits.numpy()
  assert np.max(np.abs(np.asarray(ours.logits(np.asarray([ids]))) - reference)) < 1e-4
  assert all((out / "hf" / name / "config.json").is_file() for name in RUNS)

  # the study's scores are the framework's: eval_only with the live teacher on the held-out conversations
  teacher = out / "teacher"
  overrides = ",".join(k for k in study.model_keys(str(teacher)) if not k.startswith(("init_std", "weight_dtype")))
  check = [sys.executable, "MaxText/train.py", "base.yml", "eval_only=true", f"load_parameters_path={step_dir}"]
  check += study.model_keys(str(out / "pruned_thin"))
  check += [f"base_output_directory={tmp_path / 'unused'}", "tokenizer_type=huggingface", f"tokenizer_path={teacher}"]
  check += ["dtype=float32", "use_sft=true", "dataset_type=parquet", "eval_fraction=1.0", "eval_steps=-1"]
  check += [f"dataset_path={out / 'conversations'}/heldout-*.parquet", "per_device_batch_size=2"]
  check += ["max_target_length=64"]
  check += ["use_kd=true", "kd_alpha=0", f"kd_teacher_parameters_path={teacher}", f"kd_teacher_overrides={overrides}"]
  proc = subprocess.run(check, cwd=REPO, capture_output=True, text=True, timeout=300)
  scores = EVAL_ONLY.search(proc.stdout)
  assert scores, proc.stdout[-2000:] + proc.stderr[-2000:]
  loss, kl, top1 = map(float, scores.groups())
  conv = models["thin_kd"]["conversations"]
  assert conv["loss"] == pytest.approx(loss, abs=2e-6) and conv["kl"] == pytest.approx(kl, abs=1e-4)
  assert conv["top1"] == pytest.approx(top1, abs=1e-4)  # printed to 4 decimals

  # a rerun reuses every stage: no job runs again, and the numbers are the same
  before = (out / "log.txt").read_text().count("$ ")
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0 and (out / "log.txt").read_text().count("$ ") == before
  assert json.loads((out / "results.json").read_text())["models"] == models

  # --curve: one KD student trained longer, each saved step scored, on the tasks and in chat
  proc = subprocess.run([*cmd, "--curve", "deep:4"], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = (out / "curve.md").read_text().splitlines()
  assert [r.split(" | ")[0] for r in rows[2:]] == ["| teacher", *(f"| curve_deep_kd step {s}" for s in (1, 2, 3, 4))]
  step4 = rows[-1].split(" | ")
  assert float(step4[1]) == pytest.approx(models["deep_kd"]["conversations"]["loss"], abs=1e-4)  # same seed, data
