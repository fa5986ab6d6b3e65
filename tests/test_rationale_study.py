"""The rationale study's questions, answer parsing and correctness filter (quickstart/rationale_study.py).

The study's run needs the real teacher (a random one never writes the answer marker); its pieces are
checked here in-process: questions whose stated answer matches the arithmetic read back from the text,
the two ways a reply's answer is read, and the filter that keeps only the teacher's right answers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText.inference import rationales  # noqa: E402
from quickstart import rationale_study as study  # noqa: E402


def test_questions_are_distinct_and_their_answers_right():
  questions = study.make_questions(220, seed=0)
  texts = [q["question"] for q in questions]
  assert len(set(texts)) == 220
  assert all(q["answer"] >= 1 for q in questions)
  for q in questions:  # the answer is the arithmetic of the question's numbers, by the operation the study reports
    a, b = map(int, re.findall(r"\d+", q["question"]))
    assert q["answer"] == (a - b if study.is_subtraction(q["question"]) else a + b)
  assert {t.split()[0] for t in texts} >= {"What", "There", "Tom"}  # several templates drawn
  assert 0 < sum(map(study.is_subtraction, texts)) < len(texts)  # both operations
  assert study.make_questions(220, seed=0) == questions  # the held-out split depends on the seed alone


def test_replies_are_read_as_numbers():
  assert study.first_number("16.") == 16
  assert study.first_number("It is 1,200 apples") == 1200
  assert study.first_number("sixteen") is None
  assert study.answer_after_marker("4 + 3 = 7.\nThe answer is 7.\n\nThen 7 x 2 = 14.") == 7
  assert study.answer_after_marker("The answer is 5. Wait. The answer is: 6") == 6  # the last one counts
  assert study.answer_after_marker("4 + 3 = 7 apples.") is None


def test_score_splits_by_operation():
  questions = [{"messages": [{"role": "user", "content": q}], "answer": a}
               for q, a in (("What is 2 + 3?", 5), ("What is 9 - 4?", 5), ("What is 6 + 6?", 12))]  # fmt: skip
  scored = study.score(["5.", "It is 5", "no idea"], questions, study.first_number)
  assert scored == {"accuracy": 2 / 3, "addition": 1 / 2, "subtraction": 1.0, "answered": 2 / 3}


def test_keep_correct_keeps_the_right_answers_and_counts(tmp_path):
  asked = ["What is 2 + 3?", "What is 9 - 4?", "What is 6 + 6?"]
  said = ["2 + 3 = 5.\nThe answer is 5.", "9 - 4 = 6.\nThe answer is 6.", "The answer is: 12"]
  questions = tmp_path / "train.jsonl"
  with open(questions, "w", encoding="utf-8") as f:
    for q, answer in zip(asked, (5, 5, 12), strict=True):
      f.write(json.dumps({"messages": [{"role": "user", "content": q}], "answer": answer}) + "\n")
  generated = tmp_path / "rationales"
  generated.mkdir()
  rows = []
  for q, response in zip(asked, said, strict=True):
    prompt = [{"role": "user", "content": q}]
    tasks = rationales.task_columns(prompt, response, study.MARKER)
    rows.append({"messages": [*prompt, {"role": "assistant", "content": response}], **tasks})
  pq.write_table(pa.Table.from_pylist(rows), generated / "part-0-00000.parquet")
  (generated / "manifest.json").write_text(json.dumps({"dropped": {"no_answer": 1}}))
  args = argparse.Namespace(out=str(tmp_path / "study"))
  kept, counts = study.keep_correct(args, str(generated), str(questions))
  table = pq.read_table(os.path.join(kept, "part-00000.parquet")).to_pylist()
  assert [r["answer_messages"][-1]["content"] for r in table] == ["5.", "12"]
  assert table[0]["rationale_messages"][-1]["content"] == "2 + 3 = 5.\nThe answer is 5."
  assert counts == {"questions": 3, "with_answer": 3, "correct": 2, "dropped": {"no_answer": 1}}
  assert study.keep_correct(args, "elsewhere", str(questions)) == (kept, counts)  # the kept stage is not redone
