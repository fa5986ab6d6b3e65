"""Cross-tokenizer KD on the real teacher: SmolLM2-135M-Instruct (49,152-token byte-level BPE) into a
small student with its own 4,096-token BPE trained here on the study's corpus.

  .venv/bin/python quickstart/cross_tokenizer_study.py --teacher OUT/teacher --out OUT/xtok

`--teacher` is the main job's imported teacher (quickstart/smollm2_study.py, stage "import"). Three arms
at equal steps, seed and data order on the main job's two-domain text corpus (Shakespeare and Python's
standard-library docstrings): CE only (kd_alpha=0: the teacher runs for the metrics only, the update is
exactly CE's), ULD, and the span-aligned mix (gold). Each is scored by eval_only with the teacher on both
held-out domains and on conversations the teacher writes first (`--instructions`, self-instruct as in the
main job; 0 = none): bits per byte of the aligned text for student and teacher, and the aligned shares.
Results -> OUT/results.json (each eval also in OUT/eval/<arm>_<domain>.json: a rerun reuses it). The
step's cost against a same-tokenizer KD step is benchmarks/cross_tokenizer_step.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "quickstart"))
PY = sys.executable
STUDENT = ["emb_dim=256", "num_decoder_layers=4", "num_query_heads=4", "num_kv_heads=2", "head_dim=64", "mlp_dim=768"]
ARMS = {"ce": ["kd_alpha=0.0"], "uld": ["kd_cross_tokenizer_loss=uld"], "gold": ["kd_cross_tokenizer_loss=gold"]}
DOMAINS = ("shakespeare", "python_docs")


def run(cmd: list[str], log: str) -> str:
  with open(log, "a", encoding="utf-8") as f:
    f.write("$ " + " ".join(cmd) + "\n")
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    f.write(proc.stdout)
  if proc.returncode:
    raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}")
  return proc.stdout


def teacher_keys(teacher: str) -> list[str]:
  with open(os.path.join(teacher, "model_config.json"), encoding="utf-8") as f:
    keys = json.load(f)
  skip = ("tokenizer_type", "tokenizer_path", "scan_layers", "init_std", "weight_dtype", "max_position_embeddings")
  return [",".join(f"{k}={v}" for k, v in keys.items() if k not in skip)]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--teacher", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--eval_steps", type=int, default=8)
  parser.add_argument("--arms", default=",".join(ARMS), help="which of " + ", ".join(ARMS))
  parser.add_argument("--instructions", type=int, default=48, help="self-instruct conversations the teacher writes")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  log = os.path.join(args.out, "log.txt")
  from smollm2_study import write_corpus  # the main job's two-domain corpus and held-out split

  folders = write_corpus(argparse.Namespace(out=args.out, max_docs=0))
  conversations = teacher_conversations(args, log) if args.instructions else ""
  tokenizer = os.path.join(args.out, "student_tokenizer")
  if not os.path.isdir(tokenizer):
    run([PY, "-m", "MaxText.train_tokenizer", "--vocab_size", "4096", "--output", tokenizer,
         "--dataset_path", folders["train"]], log)  # fmt: skip
  common = ["base.yml", "dtype=float32", f"max_target_length={args.length}", f"per_device_batch_size={args.batch}"]
  common += [
    "use_kd=true",
    f"kd_teacher_parameters_path={args.teacher}",
    f"kd_teacher_overrides={teacher_keys(args.teacher)[0]}",
  ]
  common += ["kd_alpha=0.5", "kd_temperature=1.0"]
  cross = ["tokenizer_type=huggingface", f"tokenizer_path={tokenizer}", "vocab_size=4096", *STUDENT]
  cross += [f"kd_teacher_tokenizer_path={args.teacher}", f"kd_teacher_max_target_length={args.length * 3 // 2}"]
  results = {}
  for arm in args.arms.split(","):
    keys = ARMS[arm]
    run_dir = os.path.join(args.out, "runs", arm)
    if not os.path.isdir(os.path.join(run_dir, "checkpoints", str(args.steps))):
      out = run([PY, "MaxText/train.py", *common, *cross, *keys, f"run_name={arm}",
                 f"base_output_directory={os.path.join(args.out, 'runs')}", f"dataset_path={folders['train']}",
                 "eval_fraction=0.0", f"steps={args.steps}", "learning_rate=3e-3", "log_period=10",
                 f"checkpoint_period={args.steps}"], log)  # fmt: skip
      print(out.strip().splitlines()[-1], flush=True)
    results[arm] = {"tokens_per_s_after_compile": speeds(run_dir)}
    held_out = {d: [f"dataset_path={folders['train']}", f"eval_dataset_path={folders['heldout_' + d]}",
                    f"eval_steps={args.eval_steps}"] for d in DOMAINS}  # fmt: skip
    if conversations:  # every conversation, assistant tokens only, rendered with the teacher's template
      # whole conversations: the student's tokenizer spends many tokens on the chat template's markers
      held_out["conversations"] = ["use_sft=true", "dataset_type=parquet", f"dataset_path={conversations}",
                                   "eval_fraction=1.0", "eval_steps=-1", "max_target_length=512",
                                   "kd_teacher_max_target_length=512", "per_device_batch_size=4"]  # fmt: skip
    for domain, data_keys in held_out.items():
      saved = os.path.join(args.out, "eval", f"{arm}_{domain}.json")
      if os.path.isfile(saved):
        with open(saved, encoding="utf-8") as f:
          results[arm][domain] = json.load(f)
        continue
      out = run([PY, "MaxText/train.py", *common, *cross, *keys, "eval_only=true",
                 f"load_parameters_path={os.path.join(run_dir, 'checkpoints', str(args.steps))}",
                 f"base_output_directory={os.path.join(args.out, 'eval')}", f"run_name={arm}_{domain}",
                 *data_keys, "eval_sampling=spread"], log)  # fmt: skip
      results[arm][domain] = parse_eval(out)
      with open(saved, "w", encoding="utf-8") as f:
        json.dump(results[arm][domain], f)
      print(arm, domain, results[arm][domain], flush=True)
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  plot(results, os.path.join(args.out, "cross_tokenizer.png"), args.steps)
  print(json.dumps(results, indent=1))


def plot(results: dict, path: str, steps: int) -> None:
  """Held-out bits per byte of each arm on each domain (the teacher's, far below, in the titles)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  arms = list(results)
  fig, axes = plt.subplots(1, len(DOMAINS), figsize=(4 * len(DOMAINS), 3.2))
  for ax, domain in zip(axes, DOMAINS, strict=True):
    values = [results[arm][domain]["student_bits_per_byte"] for arm in arms]
    ax.bar(arms, values, color=["#999999", "#4477aa", "#cc6677"][: len(arms)])
    ax.set_ylim(min(values) * 0.97 if min(values) > 0 else 0, max(values) * 1.01)
    ax.set_title(f"held-out {domain} (teacher {results[arms[0]][domain]['teacher_bits_per_byte']:.4f})")
    ax.set_ylabel("bits per byte (aligned text)")
    for i, v in enumerate(values):
      ax.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
  fig.suptitle(f"student with its own 4,096-token BPE, {steps} steps; teacher SmolLM2-135M-Instruct", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def teacher_conversations(args, log: str) -> str:
  """OUT/conversations: the teacher's own chat, self-instruct with the main job's generation keys (its
  filters keep the instructions and answers that end); a parquet glob of all of them (none is trained on)."""
  from smollm2_study import GENERATION, SYSTEM_PROMPT

  out = os.path.join(args.out, "conversations")
  if not os.path.isfile(os.path.join(out, "manifest.json")):
    run([PY, "-m", "MaxText.generate_distillation_data", "base.yml", f"load_parameters_path={args.teacher}",
         "generation_self_instruct=true", f"generation_num_instructions={args.instructions}",
         f"generation_system_prompt={SYSTEM_PROMPT}", f"generation_output_dir={out}", *GENERATION,
         "per_device_batch_size=16", "generation_prompts_per_shard=32", "tokenizer_type=huggingface",
         f"tokenizer_path={args.teacher}", "dtype=float32", "remat_policy=none",
         "max_target_length=256"], log)  # fmt: skip
  return os.path.join(out, "*.parquet")


def speeds(run_dir: str) -> list[float]:
  """Training tokens/s of each logged window after the first (which holds the compile)."""
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    found = [json.loads(line).get("tokens_per_s") for line in f]
  return [s for s in found if s][1:]


def parse_eval(stdout: str) -> dict:
  """The eval_only line's figures (metrics.fidelity_text prints the cross-tokenizer ones)."""
  patterns = {
    "loss": r"loss ([0-9.]+)",
    "student_bits_per_byte": r"bits per byte of the aligned text: student ([0-9.]+)",
    "teacher_bits_per_byte": r"bits per byte of the aligned text: student [0-9.]+ teacher ([0-9.]+)",
    "aligned_head_share": r"aligned heads ([0-9.]+)",
    "exact_share": r"exact heads ([0-9.]+)",
  }
  found = {name: re.search(pattern, stdout) for name, pattern in patterns.items()}
  return {name: float(match.group(1)) for name, match in found.items() if match}


if __name__ == "__main__":
  main()
