"""The main job's chain on a tiny GGUF: import -> prune -> CE and KD students -> export -> transformers, then
the generation study on it (teacher answers -> SFT, word-level KD and on-policy students)."""

import json
import os
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


@pytest.mark.slow
def test_study_chain_on_a_tiny_gguf_exports_students_transformers_reproduces(tmp_path):
  tokens, merges = train_bpe(400)
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
    vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128,
  )  # fmt: skip
  write_gguf(tmp_path / "tiny.gguf", transformers.LlamaForCausalLM(config).eval(), "llama", "Q8_0", tokens, merges)
  out = tmp_path / "study"
  cmd = [sys.executable, "quickstart/smollm2_study.py", "--out", str(out), "--gguf", str(tmp_path / "tiny.gguf")]
  cmd += ["--prune", "prune_num_layers=2", "prune_mlp_dim=64", "--steps", "3", "--batch", "2", "--length", "32"]
  cmd += ["--eval_batches", "2", "--new_tokens", "4", "--max_docs", "3", "--cloze", "4", "--cloze_anywhere"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (out / "log.txt").read_text()[-3000:]

  results = json.loads((out / "results.json").read_text())
  models = results["models"]
  assert set(models) == {"teacher", "pruned, before training", "ce", "kd_a0.5_T1", "kd_a1_T1"}
  assert all(np.isfinite(m["loss"][d]) for m in models.values() for d in ("shakespeare", "docs", "mean"))
  assert models["ce"]["non_embedding"] < models["teacher"]["non_embedding"]
  mean = lambda name: models[name]["loss"]["mean"]
  gap = mean("pruned, before training") - mean("teacher")
  for name in ("ce", "kd_a0.5_T1", "kd_a1_T1"):  # the stated share is the stated formula of the losses
    assert models[name]["gap_closed"] == pytest.approx((mean("pruned, before training") - mean(name)) / gap, rel=1e-9)
    assert [c["step"] for c in results["curves"][name]] == [1, 2, 3]  # every saved step evaluated
    assert results["curves"][name][-1]["mean"] == mean(name)
  # the split is by document: no held-out file is among the training files
  data = out / "data"
  train = set(os.listdir(data / "train"))
  assert train and not train & (set(os.listdir(data / "heldout_shakespeare")) | set(os.listdir(data / "heldout_docs")))
  assert len(results["chat"]["teacher"]) == 3 and (out / "smollm2_study.png").is_file()
  # task accuracy through lm-eval (4 cloze passages per held-out domain) and fidelity of each student
  for domain in ("shakespeare", "docs"):
    assert len((out / "evals" / f"cloze_{domain}.jsonl").read_text().splitlines()) == 4
  for name, model in models.items():
    assert all(
      0.0 <= model["cloze"][d]["acc"] <= 1.0 and model["cloze"][d]["perplexity"] > 1 for d in ("shakespeare", "docs")
    )
    fidelity = model["fidelity"]
    assert (fidelity is None) == (name in ("teacher", "pruned, before training"))
    assert fidelity is None or (fidelity["kl"] > 0 and 0.0 <= fidelity["top1"] <= 1.0)
  assert "retention" in (out / "results.md").read_text()

  # the exported student is the trained one: transformers gives our logits on the run's tokenizer's ids
  best = next(k for k in results["chat"] if k.startswith("student"))[len("student (") : -1]
  step_dir = params_io.latest_step_dir(str(out / "runs" / best))
  pruned_keys = json.loads((out / "pruned" / params_io.MODEL_CONFIG_FILE).read_text())
  (tmp_path / "student_params").mkdir()
  (tmp_path / "student_params" / params_io.MODEL_CONFIG_FILE).write_text(json.dumps(pruned_keys))
  os.symlink(os.path.join(step_dir, "params"), tmp_path / "student_params" / "params")
  ours = _load_ours(tmp_path / "student_params")
  hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf_student", dtype=torch.float32).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(out / "hf_student")
  ids = hf_tok.encode("To be, or not to be", add_special_tokens=False)
  with torch.no_grad():
    reference = hf(torch.tensor([ids])).logits.numpy()
  assert np.max(np.abs(np.asarray(ours.logits(np.asarray([ids]))) - reference)) < 1e-4
  assert hf_tok.chat_template and hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)

  # the generation study on the same chain: teacher answers -> SFT students (CE, word-level KD, on-policy)
  cmd = [sys.executable, "quickstart/generation_study.py", "--out", str(out), "--steps", "2"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (out / "gen" / "log.txt").read_text()[-3000:]
  rows = (out / "gen" / "results.md").read_text().splitlines()[2:]
  assert [r.split(" | ")[0] for r in rows] == ["| seq_kd", "| seq_kd+word_kd", "| seq_kd+on_policy"]
  assert all(np.isfinite(float(r.split(" | ")[1])) for r in rows)
