"""Supervised fine-tuning data: conversations rendered with the chat template, loss on assistant tokens.

A record holds a list of messages (`train_data_columns`, default `messages`: [{role, content}, ...], as
TRL and MaxText take them) in a JSONL, Parquet or Arrow file. The conversation is rendered with the tokenizer's
chat template and tokenized once; with `sft_train_on_completion_only` only the tokens of assistant turns
(their text and the template's end-of-turn tokens after it) are targets of the loss. Which tokens those
are is found by rendering prefixes: the tokens of `messages[:i]` followed by the generation prompt end
where assistant message i begins, and those of `messages[:i + 1]` where it ends. A template whose
prefixes are not prefixes of the whole rendering is refused, naming the record.

The mask reaches the loss through `targets_segmentation` (0 = not a target), the field every loss
already weights tokens by, so plain CE, online KD and offline KD (whose cache stores the field) all
train on assistant tokens only, while attention still sees the whole conversation (`inputs_segmentation`).
"""

from __future__ import annotations

import numpy as np

from MaxText.config.errors import BadInputError, MissingFieldError, MissingFileError
from MaxText.data import chat
from MaxText.data.text_files import jsonl_fields, read_arrow, read_parquet


def _conversations_jsonl(path: str, column: str) -> list[list[dict]]:
  fields = jsonl_fields(path, column, "train_data_columns")
  return [chat.check_messages(messages, f"train_data_columns: {where}") for where, messages in fields]


def _conversations_table(kind: str, table, path: str, column: str) -> list[list[dict]]:
  if column not in table.column_names:
    raise MissingFieldError(f"train_data_columns: {kind} file {path!r} has no column {column!r}")
  where = lambda i: f"train_data_columns: {kind} file {path!r} row {i}"
  return [chat.check_messages(m, where(i)) for i, m in enumerate(table.column(column).to_pylist())]


def _conversations_parquet(path: str, column: str) -> list[list[dict]]:
  return _conversations_table("parquet", read_parquet(path, "dataset_path"), path, column)


def _conversations_arrow(path: str, column: str) -> list[list[dict]]:
  return _conversations_table("arrow", read_arrow(path, "dataset_path"), path, column)


_READERS = {"jsonl": _conversations_jsonl, "parquet": _conversations_parquet, "arrow": _conversations_arrow}


def read_conversations(config, files: list[str]) -> list[list[dict]]:
  read = _READERS[config.dataset_type]
  return [conversation for path in files for conversation in read(path, config.train_data_columns)]


def encode_conversation(tokenizer, template: tuple[str, dict], messages: list[dict], completion_only: bool, where: str):
  """(tokens, 1.0 where the token is an assistant token to learn) of one conversation, both int32 [n]."""
  render = lambda msgs, prompt: tokenizer.encode(chat.render(*template, msgs, add_generation_prompt=prompt))
  tokens = render(messages, False)
  trained = np.zeros(len(tokens), np.int32) if completion_only else np.ones(len(tokens), np.int32)
  for i, message in enumerate(messages):
    if not completion_only or message["role"] != "assistant":
      continue
    before, through = render(messages[:i], True), render(messages[: i + 1], False)
    if tokens[: len(through)] != through or through[: len(before)] != before:
      raise BadInputError(
        f"{where}: the chat template does not render message {i}'s prefix as a prefix of the conversation, "
        "so its assistant tokens cannot be found (set sft_train_on_completion_only=false to train on all)"
      )
    trained[len(before) : len(through)] = 1
  return np.asarray(tokens, np.int32), trained


def sft_examples(config, tokenizer, files: list[str]) -> list[dict]:
  """One example per conversation: inputs, targets and the targets' loss mask, cut to max_target_length."""
  template = chat.read_chat_template(config.tokenizer_path)
  examples = []
  for index, messages in enumerate(read_conversations(config, files)):
    where = f"dataset_path: conversation {index}"
    tokens, trained = encode_conversation(tokenizer, template, messages, config.sft_train_on_completion_only, where)
    tokens, trained = tokens[: config.max_target_length + 1], trained[: config.max_target_length + 1]
    if len(tokens) < 2 or not trained[1:].any():
      continue  # nothing to learn from (e.g. its assistant turn lies beyond max_target_length)
    examples.append({"inputs": tokens[:-1], "targets": tokens[1:], "targets_mask": trained[1:]})
  if not examples:
    raise BadInputError("dataset_path: no conversation has an assistant token within max_target_length")
  return examples


def conversation_text(template: tuple[str, dict], messages: list[dict], completion_only: bool, where: str) -> dict:
  """Cross-tokenizer KD's form of a conversation: {"text": its rendering, "trained": [n, 2] character
  ranges whose tokens are targets}; each tokenizer then marks its own tokens inside them (data/two_stream.py).
  An assistant turn's range is found as encode_conversation finds its tokens, on the rendered text."""
  text = chat.render(*template, messages, add_generation_prompt=False)
  if not completion_only:
    return {"text": text, "trained": np.asarray([[0, len(text)]], np.int64)}
  ranges = []
  for i, message in enumerate(messages):
    if message["role"] != "assistant":
      continue
    before = chat.render(*template, messages[:i], add_generation_prompt=True)
    through = chat.render(*template, messages[: i + 1], add_generation_prompt=False)
    if not (text.startswith(through) and through.startswith(before)):
      raise BadInputError(
        f"{where}: the chat template does not render message {i}'s prefix as a prefix of the conversation, "
        "so its assistant text cannot be found (set sft_train_on_completion_only=false to train on all)"
      )
    ranges.append([len(before), len(through)])
  return {"text": text, "trained": np.asarray(ranges, np.int64).reshape(-1, 2)}


def sft_texts(config, files: list[str]) -> list[dict]:
  """Every conversation as conversation_text gives it, rendered with the student tokenizer's chat template,
  or the teacher's when the student's tokenizer has none (one trained here for the student has none)."""
  try:
    template = chat.read_chat_template(config.tokenizer_path)
  except (BadInputError, MissingFileError):
    template = chat.read_chat_template(config.kd_teacher_tokenizer_path)
  completion_only = config.sft_train_on_completion_only
  return [
    conversation_text(template, messages, completion_only, f"dataset_path: conversation {index}")
    for index, messages in enumerate(read_conversations(config, files))
  ]
