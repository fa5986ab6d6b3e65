"""Sequence-level and on-policy distillation on the main job's teacher and pruned student.

  .venv/bin/python quickstart/smollm2_study.py        # first: makes OUT/teacher and OUT/pruned
  .venv/bin/python quickstart/generation_study.py     # then this (about 15 minutes on 2 CPU cores)

1. 120 instruction prompts (40 topics x 3 questions) -> OUT/gen/prompts.jsonl;
2. the teacher answers each (generate_distillation_data.py, greedy, up to 48 tokens) -> OUT/gen/answers;
3. the pruned student is fine-tuned on those conversations (use_sft, loss on assistant tokens only) for
   the same steps, data order and seed, three ways: CE on the teacher's answers (sequence-level KD), plus
   word-level KD from the live teacher on them (off-policy), plus on-policy steps where the student
   answers the prompts itself and the teacher scores its tokens (kd_on_policy_fraction 0.5);
4. each run's eval pass (every 8th conversation by hash, never trained on) gives the held-out loss on the
   teacher's answers and, for the KD runs, the KL to the teacher there; -> OUT/gen/results.md.
Stages whose output exists are skipped, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from quickstart.smollm2_study import PY, model_keys, run  # noqa: E402

TOPICS = [
  "the sea",
  "rain",
  "the moon",
  "bread",
  "music",
  "chess",
  "bees",
  "volcanoes",
  "libraries",
  "trains",
  "gardens",
  "winter",
  "coffee",
  "bridges",
  "maps",
  "clocks",
  "rivers",
  "deserts",
  "owls",
  "glass",
  "paper",
  "salt",
  "wind",
  "honey",
  "castles",
  "forests",
  "snow",
  "lighthouses",
  "kites",
  "cheese",
  "mountains",
  "ships",
  "stars",
  "lanterns",
  "tea",
  "wolves",
  "markets",
  "islands",
  "bicycles",
  "candles",
]
QUESTIONS = ("Write one sentence about {}.", "What is special about {}?", "Give me a short fact about {}.")
RUNS = {  # name -> keys on top of the SFT run
  "seq_kd": [],
  "seq_kd+word_kd": ["use_kd=true", "kd_alpha=0.5"],
  "seq_kd+on_policy": ["use_kd=true", "kd_alpha=0.5", "kd_on_policy_fraction=0.5", "kd_on_policy_max_new_tokens=48"],
}


def write_prompts(path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for topic in TOPICS:
      for question in QUESTIONS:
        f.write(json.dumps({"messages": [{"role": "user", "content": question.format(topic)}]}) + "\n")


def common_keys(args) -> list[str]:
  teacher = os.path.join(args.out, "teacher")
  return ["tokenizer_type=huggingface", f"tokenizer_path={teacher}", "dtype=float32", "remat_policy=none"]


def generate_answers(args, prompts: str, answers: str) -> None:
  if os.path.isfile(os.path.join(answers, "manifest.json")):
    return
  teacher = os.path.join(args.out, "teacher")
  cmd = [PY, "-m", "MaxText.generate_distillation_data", "base.yml", f"load_parameters_path={teacher}"]
  cmd += ["dataset_type=jsonl", f"dataset_path={prompts}", f"generation_output_dir={answers}"]
  cmd += ["decode_max_new_tokens=48", "per_device_batch_size=8", *common_keys(args)]
  print(f"teacher answers: {run(cmd, os.path.join(args.out, 'gen', 'log.txt')):.0f} s")


def train(args, name: str, extra: list[str], answers: str) -> None:
  out = os.path.join(args.out, "gen", "runs")
  if os.path.isfile(os.path.join(out, name, "metrics.jsonl")):
    return
  teacher, student = os.path.join(args.out, "teacher"), os.path.join(args.out, "pruned")
  cmd = [PY, "MaxText/train.py", "base.yml", f"run_name={name}", f"base_output_directory={out}"]
  cmd += [*model_keys(student), f"load_parameters_path={student}", *common_keys(args)]
  cmd += ["use_sft=true", "dataset_type=parquet", f"dataset_path={answers}/part-*.parquet", "eval_fraction=0.125"]
  cmd += ["max_target_length=128", "per_device_batch_size=8", f"steps={args.steps}", "learning_rate=3e-4"]
  cmd += [f"eval_interval={args.steps}", "eval_steps=2", "log_period=1", "enable_checkpointing=false"]
  if any(k.startswith("use_kd") for k in extra):
    overrides = ",".join(k for k in model_keys(teacher) if not k.startswith(("init_std", "weight_dtype")))
    cmd += [f"kd_teacher_parameters_path={teacher}", f"kd_teacher_overrides={overrides}"]
  print(f"{name}: {run(cmd + extra, os.path.join(args.out, 'gen', 'log.txt')):.0f} s")


def results(args) -> str:
  rows = ["| student run | held-out loss on the teacher's answers | KL(teacher \\|\\| student) there | wall time |"]
  rows.append("|---|---|---|---|")
  for name in RUNS:
    with open(os.path.join(args.out, "gen", "runs", name, "metrics.jsonl"), encoding="utf-8") as f:
      records = [json.loads(line) for line in f]
    final = [r for r in records if "eval/loss" in r][-1]
    kl = final.get("eval/kd/kl_div_T1")
    train_s = sum(r.get("step_time_s", 0.0) for r in records if "step_time_s" in r)
    rows.append(f"| {name} | {final['eval/loss']:.4f} | {'-' if kl is None else f'{kl:.4f}'} | {train_s:.0f} s |")
  return "\n".join(rows)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=os.path.join(REPO, "outputs", "smollm2"))
  parser.add_argument("--steps", type=int, default=60)
  args = parser.parse_args()
  for stage in ("teacher", "pruned"):
    if not os.path.isdir(os.path.join(args.out, stage)):
      sys.exit(f"error: {os.path.join(args.out, stage)} is missing; run quickstart/smollm2_study.py first")
  os.makedirs(os.path.join(args.out, "gen"), exist_ok=True)
  prompts, answers = os.path.join(args.out, "gen", "prompts.jsonl"), os.path.join(args.out, "gen", "answers")
  write_prompts(prompts)
  generate_answers(args, prompts, answers)
  for name, extra in RUNS.items():
    train(args, name, extra, answers)
  table = results(args)
  with open(os.path.join(args.out, "gen", "results.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  print(table)


if __name__ == "__main__":
  main()
