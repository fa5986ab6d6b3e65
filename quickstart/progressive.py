"""Progressive distillation: teacher -> prune -> distill -> prune -> distill ..., each stage's student the
next stage's teacher, beside one-shot pruning to the final size distilled from the first teacher for as
many steps as the chain's stages together.

  .venv/bin/python quickstart/progressive.py               # the smoke run's byte-level models (~10 min, 2 CPU cores)
  .venv/bin/python quickstart/progressive.py --steps N --stage_steps M --out DIR

The teacher is the smoke run's (docs/distillation.md: the demo model 256 wide, 6 layers, 4.30M parameters),
trained here from scratch for --steps; each stage prunes its teacher (prune_student.py, calibrated on the
training stream) by STAGES and distils it for --stage_steps with the smoke run's KD keys. Every stage
resumes: a finished prune or run is reused, an interrupted run continues from its newest checkpoint.
Writes OUT/progressive.md: each model's size and held-out loss (the runs' own eval, the same 20 batches).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = ["model_name=demo", "emb_dim=256", "num_decoder_layers=6", "mlp_dim=768"]
STAGES = {  # name -> prune keys applied to the previous stage's model
  "stage1": ["prune_num_layers=4", "prune_mlp_dim=512"],
  "stage2": ["prune_emb_dim=128", "prune_mlp_dim=384"],
}
ONE_SHOT = ["prune_num_layers=4", "prune_emb_dim=128", "prune_mlp_dim=384"]  # the last stage's shape, at once
KD = ["use_kd=true", "kd_alpha=0.5", "kd_temperature=2.0", "kd_top_p=0.9", "kd_use_other_bucket=true"]
COMMON = ["per_device_batch_size=16", "learning_rate=2e-3", "eval_steps=20", "dtype=float32"]
MODEL_KEYS = ("emb_dim", "num_decoder_layers", "num_query_heads", "num_kv_heads", "head_dim", "mlp_dim")


def run(cmd: list[str], log: str) -> None:
  with open(log, "a", encoding="utf-8") as f:
    f.write("$ " + " ".join(cmd) + "\n")
    f.flush()
    proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if proc.returncode:
    sys.exit(f"error: {cmd[1]} failed (exit {proc.returncode}); see {log}")


def read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def model_keys(folder: str) -> list[str]:
  """A pruned checkpoint's model keys, as key=value."""
  keys = read_json(os.path.join(folder, "model_config.json"))
  return [f"{k}={keys[k]}" for k in MODEL_KEYS]


def train(args, name: str, keys: list[str], steps: int) -> str:
  """A run (skipped when finished, resumed when interrupted); its final step folder."""
  final = os.path.join(args.out, name, "checkpoints", str(steps))
  if not os.path.isdir(final):
    print(f"== train {name} ({steps} steps)", flush=True)
    cmd = [sys.executable, "MaxText/train.py", "base.yml", f"run_name={name}", f"base_output_directory={args.out}"]
    cmd += [f"steps={steps}", f"eval_interval={steps}", f"checkpoint_period={steps}", *COMMON, *keys]
    run(cmd, args.log)
  return final


def prune(args, name: str, teacher_step: str, keys: list[str]) -> str:
  """The teacher's step folder pruned by `keys` (its model keys come from the run's saved config)."""
  out = os.path.join(args.out, f"pruned_{name}")
  if not os.path.isdir(out):
    print(f"== prune {name}: {' '.join(keys)}", flush=True)
    cmd = [sys.executable, "-m", "MaxText.prune_student", "base.yml", f"load_parameters_path={teacher_step}"]
    cmd += [f"prune_output_dir={out}", *COMMON, *keys]
    run(cmd, args.log)
  return out


def distill(args, name: str, student: str, teacher_step: str, teacher_keys: list[str], steps: int) -> str:
  overrides = ",".join(k for k in teacher_keys if not k.startswith("model_name"))
  keys = ["model_name=demo", *model_keys(student), f"load_parameters_path={student}", *KD]
  keys += [f"kd_teacher_parameters_path={teacher_step}", "kd_teacher_model_name=demo"]
  keys.append(f"kd_teacher_overrides={overrides}")
  return train(args, name, keys, steps)


def summary(args, name: str) -> dict:
  config = read_json(os.path.join(args.out, name, "config.json"))
  with open(os.path.join(args.out, name, "metrics.jsonl"), encoding="utf-8") as f:
    last = [r for r in map(json.loads, f) if "eval/loss" in r][-1]
  d, f, n = config["emb_dim"], config["mlp_dim"], config["num_decoder_layers"]
  attention = d * config["head_dim"] * (2 * config["num_query_heads"] + 2 * config["num_kv_heads"])
  return {
    "shape": f"{n} layers x {d} wide, MLP {f}",
    "non_embedding": n * (attention + 3 * d * f + 2 * d) + d,
    "loss": last["eval/loss"],
    "kl": last.get("eval/kd/kl_div_T1"),
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="outputs/progressive")
  p.add_argument("--steps", type=int, default=600, help="the teacher's training steps")
  p.add_argument("--stage_steps", type=int, default=300, help="distillation steps per stage")
  p.add_argument("--toy", action="store_true", help="short sequences and evals (the tests)")
  args = p.parse_args()
  if args.toy:
    COMMON[:] = ["per_device_batch_size=2", "max_target_length=32", "eval_steps=1", "dtype=float32", "log_period=1"]
  os.makedirs(args.out, exist_ok=True)
  args.log = os.path.join(args.out, "log.txt")
  print(f"progressive distillation -> {args.out}; every job's output goes to {args.log}", flush=True)
  teacher_step = train(args, "teacher", TEACHER, args.steps)
  rows = [("teacher", "trained from scratch", summary(args, "teacher"))]
  previous, previous_keys = teacher_step, TEACHER
  for name, keys in STAGES.items():
    pruned = prune(args, name, previous, keys)
    previous = distill(args, name, pruned, previous, previous_keys, args.stage_steps)
    previous_keys = ["model_name=demo", *model_keys(pruned)]
    rows.append((name, f"prune ({' '.join(keys)}) + KD from the previous model", summary(args, name)))
  one_shot_steps = args.stage_steps * len(STAGES)
  pruned = prune(args, "one_shot", teacher_step, ONE_SHOT)
  distill(args, "one_shot", pruned, teacher_step, TEACHER, one_shot_steps)
  rows.append(("one_shot", f"prune to the last stage's shape at once + KD from the teacher, {one_shot_steps} steps",
               summary(args, "one_shot")))  # fmt: skip
  lines = ["| model | how | shape | non-embedding parameters | held-out loss | KL to its teacher (T = 1) |"]
  lines.append("|---|---|---|---|---|---|")
  for name, how, s in rows:
    kl = "-" if s["kl"] is None else f"{s['kl']:.4f}"
    lines.append(f"| {name} | {how} | {s['shape']} | {s['non_embedding']:,} | {s['loss']:.4f} | {kl} |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(args.out, "progressive.md"), "w", encoding="utf-8") as f:
    f.write(table)
  print(table)


if __name__ == "__main__":
  main()
