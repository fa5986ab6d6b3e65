"""Offline lm-eval tasks: the LAMBADA-style cloze built from any held-out text, and task YAMLs over a
user's JSONL (multiple choice, exact-match generation). Every task reads a local file (lm-eval's
`dataset_path: json` + `data_files`); nothing is downloaded.

The cloze follows LAMBADA (Paperno et al., 2016; lm-eval's lambada_openai): a passage of a few sentences
whose final word is to be predicted; the record is {"text": passage}, its last space-separated word the
target, scored as the log-likelihood of " word" (accuracy: the whole word is the greedy continuation;
perplexity of the word). Passages are consecutive sentences, cut without overlap once they reach
`min_words`; the final word loses its trailing punctuation; a passage is kept when that word is alphabetic
and, with `require_in_context` (LAMBADA's passages were chosen so that the word needs the wider context,
and most such words occur in it), when it also occurs earlier in the passage.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

FORMATS = ("cloze", "choice", "exact")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[A-Za-z]$")
_EDGE_PUNCTUATION = "\"'()[]{},.;:!?-_*`"


def sentences(text: str) -> list[str]:
  """The text's sentences, whitespace collapsed: a break after . ! or ? (closing quotes kept before it) and
  at every blank line (a paragraph, heading or list item of markdown ends there with or without a stop)."""
  found = []
  for paragraph in _PARAGRAPH_BREAK.split(text):
    flat = " ".join(paragraph.split())
    found += [s for s in _SENTENCE_BREAK.split(flat) if s]
  return found


def _bare(word: str) -> str:
  return word.strip(_EDGE_PUNCTUATION)


def cloze_passages(
  text: str, min_words: int = 40, max_words: int = 150, require_in_context: bool = True
) -> list[dict[str, str]]:
  """{"text": passage} records: each passage's last space-separated word is the word to predict."""
  records, passage = [], []
  for sentence in sentences(text):
    passage.append(sentence)
    words = " ".join(passage).split(" ")
    if len(words) < min_words:
      continue
    passage = []
    target = _bare(words[-1])
    if len(words) > max_words or not _WORD.match(target):
      continue
    if require_in_context and target.lower() not in {_bare(w).lower() for w in words[:-1]}:
      continue
    records.append({"text": " ".join([*words[:-1], target])})
  return records


def sample(records: list, count: int, seed: int) -> list:
  """`count` records chosen with `seed`, in their original order (all of them when count is 0 or more)."""
  if not count or count >= len(records):
    return records
  chosen = np.sort(np.random.default_rng(seed).choice(len(records), size=count, replace=False))
  return [records[i] for i in chosen]


def task_yaml(kind: str, task: str, data_file: str) -> str:
  """The lm-eval task YAML of `kind` reading `data_file` (its test split)."""
  head = (
    f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(data_file)}\n"
    "test_split: test\n"
  )
  if kind == "cloze":  # lm-eval's lambada_openai, on a local file
    return head + (
      "output_type: loglikelihood\n"
      "doc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\n"
      "doc_to_target: \"{{' '+text.split(' ')[-1]}}\"\n"
      "metric_list:\n"
      "  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
      "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
      "metadata:\n  version: 1.0\n"
    )
  if kind == "choice":  # {"question", "choices": [...], "answer": index of the right choice}
    return head + (
      "output_type: multiple_choice\n"
      'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
      'doc_to_choice: "{{choices}}"\n'
      'doc_to_target: "{{answer}}"\n'
      "metric_list:\n"
      "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
      "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
      "metadata:\n  version: 1.0\n"
    )
  if kind == "exact":  # {"prompt", "answer"}: the greedy answer up to a newline equals `answer`
    return head + (
      "output_type: generate_until\n"
      'doc_to_text: "{{prompt}}"\n'
      'doc_to_target: "{{answer}}"\n'
      'generation_kwargs:\n  until: ["\\n"]\n  do_sample: false\n  max_gen_toks: 32\n'
      "filter_list:\n  - name: strip\n    filter:\n      - function: remove_whitespace\n      - function: take_first\n"
      "metric_list:\n"
      "  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
      "    ignore_case: true\n    ignore_punctuation: true\n"
      "metadata:\n  version: 1.0\n"
    )
  raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {kind!r}")


_REQUIRED = {"choice": ("question", "choices", "answer"), "exact": ("prompt", "answer")}


def check_records(kind: str, path: str) -> int:
  """How many records `path` holds; a record without the format's fields is named by its line."""
  count = 0
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {number}: not JSON ({e.msg})") from None
      missing = [k for k in _REQUIRED.get(kind, ("text",)) if k not in record]
      if missing:
        raise ValueError(f"{path} line {number}: a {kind} record needs {', '.join(missing)}")
      answer = record.get("answer")
      if kind == "choice" and not (isinstance(answer, int) and 0 <= answer < len(record["choices"])):
        raise ValueError(f"{path} line {number}: answer must be the index of the right entry of choices")
      count += 1
  return count


def write_task(kind: str, task: str, data_file: str, output: str) -> str:
  """Writes OUTPUT/TASK.yaml reading `data_file` (absolute path); returns the YAML's path."""
  os.makedirs(output, exist_ok=True)
  path = os.path.join(output, f"{task}.yaml")
  with open(path, "w", encoding="utf-8") as f:
    f.write(task_yaml(kind, task, os.path.abspath(data_file)))
  return path
