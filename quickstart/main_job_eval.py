"""The main job's judgement of a student by what it can still do: task accuracy through lm-evaluation-harness
(the project's adapter, in-process) and graded chat answers.

Tasks (written under OUT/tasks, each reading a local file):
- everyday_choice: 40 multiple-choice questions of everyday facts (evals/data/everyday_choice.jsonl);
- everyday_short: 30 questions asked through the tokenizer's chat template with "Answer with one word.",
  after two such turns answered in one word, graded by exact match of the greedy answer's first line (case
  and punctuation ignored);
- cloze_<domain>: a LAMBADA-style final-word cloze cut from each held-out text domain.
Retention is a student's mean accuracy over the tasks divided by the teacher's.

Chat: CHAT's prompts answered greedily; an answer is right when it matches the prompt's pattern and is not
degenerate: no run of three words occurs three times in it, and no word or pair of words comes three times
in a row (the loops small students fall into).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHOICE_DATA = os.path.join(REPO, "evals", "data", "everyday_choice.jsonl")
SHORT_DATA = os.path.join(REPO, "evals", "data", "everyday_short.jsonl")
SHORT_ANSWER = "Answer with one word."
# earlier turns that show the one-word format (a sentence-long answer would fail an exact match)
SHORT_SHOTS = [("What is the capital of Portugal?", "Lisbon"), ("What colour is a lemon?", "Yellow")]
CLOZE_PASSAGES = 100  # per held-out domain (seeded sample)

# (prompt, what a right answer contains): the README's thirteen prompts, then twelve more everyday questions.
# Open requests (a sentence, a tip, a poem) are graded on staying on topic; the repetition check does the rest.
CHAT = [
  ("What is the capital of France?", r"\bparis\b"),
  ("Write one sentence about the sea.", r"\b(sea|seas|ocean|oceans|waves?)\b"),
  ("Who wrote Hamlet?", r"\bshakespeare\b"),
  ("What is the capital of Japan?", r"\btokyo\b"),
  ("How many legs does a spider have?", r"\b(eight|8)\b"),
  ("What is the largest planet in our solar system?", r"\bjupiter\b"),
  ("At what temperature does water boil, in degrees Celsius?", r"\b100\b"),
  ("Name three primary colors.", r"^(?=.*\bred\b)(?=.*\bblue\b)"),
  ("What do bees make?", r"\bhoney\b"),
  ("Give me one tip for sleeping better.", r"\b(sleep|sleeping|bed|bedtime)\b"),
  ("Translate 'thank you' into French.", r"\bmerci\b"),
  ("What is photosynthesis, in one sentence?", r"\b(sunlight|light)\b"),
  ("Write a short poem about autumn.", r"\b(autumn|fall|leaves|leaf)\b"),
  ("What is the capital of Italy?", r"\brome\b"),
  ("How many days are in a week?", r"\b(seven|7)\b"),
  ("What colour is the sky on a clear day?", r"\bblue\b"),
  ("What is two plus three?", r"\b(five|5)\b"),
  ("What animal says moo?", r"\bcows?\b"),
  ("What is the opposite of cold?", r"\bhot\b"),
  ("How many hours are in a day?", r"\b(24|twenty-four)\b"),
  ("What language is spoken in Spain?", r"\bspanish\b"),
  ("What is frozen water called?", r"\bice\b"),
  ("Which planet do we live on?", r"\bearth\b"),
  ("What is the largest ocean on Earth?", r"\bpacific\b"),
  ("Who painted the Mona Lisa?", r"\b(leonardo|da vinci)\b"),
]
_WORDS = re.compile(r"[a-z0-9'-]+")


def degenerate(answer: str, run: int = 3, times: int = 3) -> bool:
  """Whether the answer loops: some `run` consecutive words (lowercased, punctuation dropped) occur `times` or
  more times, or a word or a pair of words comes `times` times in a row."""
  words = _WORDS.findall(answer.lower())
  counts: dict[tuple[str, ...], int] = {}
  for i in range(len(words) - run + 1):
    key = tuple(words[i : i + run])
    counts[key] = counts.get(key, 0) + 1
    if counts[key] >= times:
      return True
  for width in (1, 2):
    for i in range(len(words) - width * times + 1):
      if all(words[i + k * width : i + (k + 1) * width] == words[i : i + width] for k in range(times)):
        return True
  return False


def grade(answer: str, pattern: str) -> dict[str, bool]:
  looping = degenerate(answer)
  right = bool(re.search(pattern, answer, re.IGNORECASE | re.DOTALL)) and not looping
  return {"correct": right, "degenerate": looping}


def chat_scores(answers: dict[str, list[str]]) -> dict[str, dict]:
  """Per model: right answers, degenerate answers, and `kept`, the share of the prompts the teacher answers
  right that the model answers right too; `grades` holds each answer's grade in CHAT's order."""
  patterns = [pattern for _, pattern in CHAT]
  graded = {name: [grade(a, p) for a, p in zip(texts, patterns, strict=True)] for name, texts in answers.items()}
  teacher_right = [i for i, g in enumerate(graded["teacher"]) if g["correct"]]
  scores = {}
  for name, grades in graded.items():
    kept = sum(grades[i]["correct"] for i in teacher_right) / len(teacher_right) if teacher_right else float("nan")
    scores[name] = {
      "correct": sum(g["correct"] for g in grades),
      "degenerate": sum(g["degenerate"] for g in grades),
      "kept": kept,
      "grades": grades,
    }
  return scores


def _jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: str, records: list[dict]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _asked(question: str) -> dict[str, str]:
  return {"role": "user", "content": f"{question} {SHORT_ANSWER}"}


def write_tasks(folder: str, tokenizer_path: str, heldout: dict[str, str], seed: int = 0) -> list[str]:
  """The task YAMLs and their data under `folder` (rewritten each time: they are cheap); their names.
  `heldout` maps a domain to its folder of held-out text files."""
  from MaxText.data import chat
  from MaxText.lm_harness import tasks

  os.makedirs(folder, exist_ok=True)
  names = ["everyday_choice", "everyday_short"]
  tasks.write_task("choice", names[0], CHOICE_DATA, folder)
  template = chat.read_chat_template(tokenizer_path)
  shots = [m for q, a in SHORT_SHOTS for m in (_asked(q), {"role": "assistant", "content": a})]
  asked = [
    {"prompt": chat.render(*template, [*shots, _asked(r["question"])], True), "answer": r["answer"]}
    for r in _jsonl(SHORT_DATA)
  ]
  _write_jsonl(os.path.join(folder, "everyday_short.jsonl"), asked)
  tasks.write_task("exact", names[1], os.path.join(folder, "everyday_short.jsonl"), folder)
  for domain, texts in heldout.items():
    passages = []
    for name in sorted(os.listdir(texts)):
      with open(os.path.join(texts, name), encoding="utf-8") as f:
        passages += tasks.cloze_passages(f.read())
    data = os.path.join(folder, f"cloze_{domain}.jsonl")
    _write_jsonl(data, tasks.sample(passages, CLOZE_PASSAGES, seed))
    tasks.write_task("cloze", f"cloze_{domain}", data, folder)
    names.append(f"cloze_{domain}")
  return names


def task_accuracy(
  models: dict, folder: str, names: list[str], rows: int, length: int, limit: int = 0, log: str | None = None
) -> dict:
  """{model: {task: accuracy}} (exact match for the short answers) of each model given as (Evaluator,
  checkpoint), scored in this process by lm-eval through the project's adapter (`limit` records per task, 0 =
  all); a console line per model, lm-eval's progress bars to the file `log` (None: the console's stderr)."""
  import logging

  import lm_eval
  from lm_eval.tasks import TaskManager

  from MaxText.data.tokenizer import build_tokenizer
  from MaxText.lm_harness.adapter import MaxTextLM
  from MaxText.parallel import sharding

  manager = TaskManager(include_path=folder, verbosity="WARNING")
  logging.getLogger("lm_eval").setLevel(logging.WARNING)
  accuracy = {}
  for index, (name, (evaluator, ckpt)) in enumerate(models.items()):
    started, config = time.perf_counter(), evaluator.config
    tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_path)
    lm = MaxTextLM.from_loaded(
      config, tokenizer, sharding.create_mesh(config), evaluator.graphdef, evaluator.load(ckpt),
      batch_size=rows, max_length=length, max_gen_toks=16,
    )  # fmt: skip
    with open(log or os.devnull, "a", encoding="utf-8") as f, contextlib.redirect_stderr(f if log else sys.stderr):
      results = lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        task_manager=manager,
        limit=limit or None,
        verbosity="WARNING",
        bootstrap_iters=0,  # no standard errors: their bootstrap forks worker processes beside JAX's threads
      )["results"]
    accuracy[name] = {task: _accuracy(results[task]) for task in names}
    shown = ", ".join(f"{task} {value:.3f}" for task, value in accuracy[name].items())
    print(f"  tasks {index + 1}/{len(models)} {name}: {shown} ({time.perf_counter() - started:.0f}s)", flush=True)
  return accuracy


def _accuracy(metrics: dict) -> float:
  for key in ("acc,none", "exact_match,strip"):
    if key in metrics:
      return float(metrics[key])
  raise KeyError(f"no accuracy among lm-eval's metrics {sorted(metrics)}")


def retention(accuracy: dict[str, dict[str, float]]) -> dict[str, float]:
  """Each model's mean task accuracy over the teacher's."""
  mean = {name: sum(a.values()) / len(a) for name, a in accuracy.items()}
  return {name: m / mean["teacher"] if mean["teacher"] else float("nan") for name, m in mean.items()}
