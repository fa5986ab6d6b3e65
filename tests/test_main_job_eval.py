"""The main job's graders: the repetition check, the chat grade and its scores, retention, and the task files."""

import json
import os
import sys

import pytest
from conftest import REPO

sys.path.insert(0, REPO)  # the quickstart scripts are not a package
from quickstart import main_job_eval as ev  # noqa: E402


def test_degenerate_finds_a_three_word_run_three_times_and_nothing_less():
  assert ev.degenerate("The sea is vast, unforgiving, unforgiving, unforgiving, unforgiving.")
  assert ev.degenerate("The three primary colors: The three primary colors: The three primary colors:")
  assert not ev.degenerate("The capital of France is Paris, and the capital of Italy is Rome.")  # a run twice
  assert ev.degenerate("It is very very very good.") and ev.degenerate("a human, a human, a human")
  assert not ev.degenerate("no no")  # shorter than a run


def test_grade_needs_the_pattern_and_no_loop():
  pattern = dict(ev.CHAT)["What is the capital of France?"]
  assert ev.grade("The capital of France is Paris.", pattern) == {"correct": True, "degenerate": False}
  assert ev.grade("PARIS!", pattern)["correct"]  # case is ignored
  assert not ev.grade("Parisian culture is rich.", pattern)["correct"]  # a whole word
  looped = ev.grade("Paris is Paris is Paris is Paris is", pattern)
  assert looped == {"correct": False, "degenerate": True}
  colours = dict(ev.CHAT)["Name three primary colors."]
  assert ev.grade("Blue, yellow and red.", colours)["correct"] and not ev.grade("Red and green.", colours)["correct"]


def test_chat_scores_count_right_and_looping_answers_and_the_teachers_kept():
  answers = {"teacher": [], "student": []}
  for i, (prompt, _) in enumerate(ev.CHAT):  # the teacher right on the first 4, the student on 1 and 3 of them
    right = {
      "What is the capital of France?": "Paris.",
      "Write one sentence about the sea.": "The sea is wide.",
      "Who wrote Hamlet?": "Shakespeare.",
      "What is the capital of Japan?": "Tokyo.",
    }.get(prompt, "I do not know.")
    answers["teacher"].append(right)
    answers["student"].append(right if i in (0, 2) else ("a b c " * 3 if i == 5 else "No idea."))  # fmt: skip
  scores = ev.chat_scores(answers)
  assert scores["teacher"]["correct"] == 4 and scores["teacher"]["degenerate"] == 0
  assert scores["student"]["correct"] == 2 and scores["student"]["degenerate"] == 1
  assert scores["student"]["kept"] == pytest.approx(0.5) and scores["teacher"]["kept"] == 1.0
  assert len(scores["student"]["grades"]) == len(ev.CHAT)


def test_retention_is_mean_accuracy_over_the_teachers():
  accuracy = {"teacher": {"a": 0.8, "b": 0.4}, "student": {"a": 0.6, "b": 0.3}}
  assert ev.retention(accuracy) == {"teacher": 1.0, "student": pytest.approx(0.45 / 0.6, rel=1e-12)}


def test_written_tasks_read_local_files_and_ask_in_the_chat_template(tmp_path):
  tokenizer = tmp_path / "tok"
  tokenizer.mkdir()
  template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
  template += "{% if add_generation_prompt %}<assistant>{% endif %}"
  (tokenizer / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
  texts = tmp_path / "heldout"
  texts.mkdir()
  (texts / "a.txt").write_text(" ".join(["The cat sat on the mat and looked at the cat."] * 8))
  names = ev.write_tasks(str(tmp_path / "tasks"), str(tokenizer), {"stories": str(texts)})
  assert names == ["everyday_choice", "everyday_short", "cloze_stories"]
  assert all((tmp_path / "tasks" / f"{n}.yaml").is_file() for n in names)
  short = [json.loads(line) for line in (tmp_path / "tasks" / "everyday_short.jsonl").read_text().splitlines()]
  with open(ev.SHORT_DATA, encoding="utf-8") as f:
    assert len(short) == sum(1 for line in f if line.strip())
  # two worked turns, then the question, then the assistant's turn opened
  assert short[0]["prompt"] == (
    "<user>What is the capital of Portugal? Answer with one word.</s><assistant>Lisbon</s>"
    "<user>What colour is a lemon? Answer with one word.</s><assistant>Yellow</s>"
    "<user>What is the capital of France? Answer with one word.</s><assistant>"
  )
  cloze = (tmp_path / "tasks" / "cloze_stories.jsonl").read_text().splitlines()
  assert cloze and all(json.loads(line)["text"].endswith("cat") for line in cloze)
  assert (
    os.path.isabs(ev.CHOICE_DATA) and str(tmp_path / "tasks") in (tmp_path / "tasks" / "cloze_stories.yaml").read_text()
  )
