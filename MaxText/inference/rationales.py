"""Distilling step-by-step (Hsieh et al. 2023): the teacher writes a rationale and an answer; the student
learns both as two tasks.

The answer job (`generation_rationale_template`) puts each prompt's last user turn into the template's
`{prompt}`, which asks for reasoning and then the answer after `generation_answer_marker`; the response is
split at the marker's last occurrence. Each kept record then holds, besides `messages` (the original
question and the whole response), the two tasks as conversations with task prefixes on the question:
`answer_messages` ("[answer] question" -> the answer) and `rationale_messages` ("[rationale] question" ->
the rationale, the marker and the answer). The SFT path trains on both as a dataset_mixture over the same
files with one column each, the rationale task's weight being the paper's rationale weight; at inference
the student is asked with the answer prefix and answers without writing a rationale.
"""

from __future__ import annotations

ANSWER_TASK = "[answer] "
RATIONALE_TASK = "[rationale] "
COLUMNS = ("answer_messages", "rationale_messages")


def _with_last_user(prompt: list[dict], content: str) -> list[dict]:
  last = max(i for i, m in enumerate(prompt) if m["role"] == "user")
  return [*prompt[:last], {"role": "user", "content": content}, *prompt[last + 1 :]]


def question_of(prompt: list[dict]) -> str:
  return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def ask_for_rationale(prompt: list[dict], template: str) -> list[dict]:
  """The prompt with its last user turn put into the template's {prompt}."""
  return _with_last_user(prompt, template.replace("{prompt}", question_of(prompt)))


def split_response(text: str, marker: str) -> tuple[str, str] | None:
  """(rationale, answer) at the marker's last occurrence; None without the marker or with an empty answer.

  The answer is the rest of the marker's line, a leading colon dropped ("The answer is: 16" -> "16"): a
  small teacher often keeps talking after its answer, and that text is neither answer nor rationale. The
  rationale loses the restatements of the same answer it ends with (a teacher that says its answer line
  twice), so the rationale task does not teach the repetition."""
  rationale, found, rest = text.rpartition(marker)
  answer = rest.lstrip(" \t:").split("\n", 1)[0].strip()
  return (_without_restated(rationale, marker, answer), answer) if found and answer else None


def _without_restated(rationale: str, marker: str, answer: str) -> str:
  while True:
    head, found, rest = rationale.rpartition(marker)
    if not found or rest.lstrip(" \t:").strip() != answer:
      return rationale.strip()
    rationale = head


def task_columns(prompt: list[dict], response: str, marker: str) -> dict | None:
  """The two task conversations of one answered prompt, or None when the response holds no answer."""
  parts = split_response(response, marker)
  if parts is None:
    return None
  rationale, answer = parts
  question = question_of(prompt)
  shown = f"{rationale}\n{marker} {answer}" if rationale else f"{marker} {answer}"
  return {
    "answer_messages": [*_with_last_user(prompt, ANSWER_TASK + question), {"role": "assistant", "content": answer}],
    "rationale_messages": [
      *_with_last_user(prompt, RATIONALE_TASK + question),
      {"role": "assistant", "content": shown},
    ],
  }
