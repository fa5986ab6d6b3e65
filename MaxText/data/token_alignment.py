"""Where two tokenizations of one text agree: aligned groups of tokens, and the map between the vocabularies.

A teacher and a student with different tokenizers read the same characters. A *group* is a run of
student tokens and a run of teacher tokens that start and end at the same characters, with no smaller
common boundary inside; at a group's first token both models have read exactly the same text, so their
next-token distributions there are comparable (distill/cross_tokenizer.py). Tokens with no characters
(BOS, EOS, other specials) and runs cut by a gap belong to no group.

The vocabulary map pairs the tokens whose byte strings are equal (a byte-level `Ġthe` and a
sentencepiece `▁the` are both b" the"); it is built once per pair of tokenizers and saved with the run.
"""

from __future__ import annotations

import hashlib
import json
from typing import NamedTuple

import numpy as np

from MaxText.config import storage


class Group(NamedTuple):
  student: range  # indices into the student's spans
  teacher: range  # indices into the teacher's spans


def align(student_spans, teacher_spans) -> list[Group]:
  """The aligned groups of two lists of (start, end) character spans, in text order.

  Walks both lists: a group opens where a student token and a teacher token start at the same character
  and closes at the first character where both runs end; a side that starts earlier, or an empty span,
  skips its token, and a run broken by a gap (characters no token of that side covers) is no group."""
  groups, s, t = [], 0, 0
  while s < len(student_spans) and t < len(teacher_spans):
    (s_start, s_end), (t_start, t_end) = student_spans[s], teacher_spans[t]
    if s_end <= s_start or s_start < t_start:
      s += 1
    elif t_end <= t_start or t_start < s_start:
      t += 1
    else:
      s_last, t_last, closed = _grow(student_spans, teacher_spans, s, t)
      if closed:
        groups.append(Group(range(s, s_last + 1), range(t, t_last + 1)))
        s, t = s_last + 1, t_last + 1
      else:  # the broken side restarts at its token after the gap; the other past its straddling token
        s, t = s_last, t_last
  return groups


def _grow(student_spans, teacher_spans, s: int, t: int) -> tuple[int, int, bool]:
  """Extends the side that ends first until both end together: (last student, last teacher, closed).
  Not closed: the side that broke is left on the token after its gap, the other one past its last token."""
  s_end, t_end = student_spans[s][1], teacher_spans[t][1]
  while s_end != t_end:
    if s_end < t_end:
      s += 1
      if s >= len(student_spans) or student_spans[s][0] != s_end:
        return s, t + 1, False
      s_end = student_spans[s][1]
    else:
      t += 1
      if t >= len(teacher_spans) or teacher_spans[t][0] != t_end:
        return s + 1, t, False
      t_end = teacher_spans[t][1]
  return s, t, True


# GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for code points from 256 up.
def _byte_level_decoder() -> dict[str, int]:
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
  codes, extra = {}, 0
  for b in range(256):
    if b in printable:
      codes[chr(b)] = b
    else:
      codes[chr(256 + extra)] = b
      extra += 1
  return codes


_BYTE_LEVEL = _byte_level_decoder()


def _decoder_kind(tokenizer_json: dict) -> str:
  text = json.dumps(tokenizer_json.get("decoder") or {})
  if '"ByteLevel"' in text:
    return "byte_level"
  if "\u2581" in text or '"Metaspace"' in text or "ByteFallback" in text:
    return "metaspace"
  return "plain"


def _token_bytes(token: str, kind: str) -> bytes | None:
  if kind == "byte_level":
    if not all(c in _BYTE_LEVEL for c in token):
      return None
    return bytes(_BYTE_LEVEL[c] for c in token)
  if kind == "metaspace":
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
      return bytes([int(token[3:5], 16)])
    return token.replace("\u2581", " ").encode("utf-8")
  return token.encode("utf-8")


def vocabulary_strings(tokenizer_json: dict) -> dict[bytes, int]:
  """Each token's byte string (specials as their own text, marked apart) -> id."""
  from tokenizers import Tokenizer as HFTokenizer

  tok = HFTokenizer.from_str(json.dumps(tokenizer_json))
  specials = {t["content"] for t in tokenizer_json.get("added_tokens", []) if t.get("special")}
  kind = _decoder_kind(tokenizer_json)
  strings = {}
  for token, token_id in tok.get_vocab(with_added_tokens=True).items():
    key = b"\x00special:" + token.encode("utf-8") if token in specials else _token_bytes(token, kind)
    if key is not None:
      strings.setdefault(key, token_id)
  return strings


def token_byte_lengths(tokenizer_json: dict, vocab: int) -> np.ndarray:
  """int32 [vocab]: each token's length in bytes (0 for specials and unknown strings)."""
  lengths = np.zeros(vocab, np.int32)
  for key, token_id in vocabulary_strings(tokenizer_json).items():
    if token_id < vocab and not key.startswith(b"\x00special:"):
      lengths[token_id] = len(key)
  return lengths


def byte_spans(char_spans: np.ndarray, ids: np.ndarray, char_bytes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """[n, 2] UTF-8 byte spans from character spans. Byte-level tokenizers split a multi-byte character
  over several tokens that all report that character's span: such a run is divided in order by the
  tokens' own byte lengths, so each token gets its own bytes and the run stays contiguous."""
  cumulative = np.concatenate([[0], np.cumsum(char_bytes)]).astype(np.int64)
  spans = cumulative[char_spans]
  repeats = np.flatnonzero((char_spans[1:] == char_spans[:-1]).all(axis=1) & (char_spans[1:, 1] > char_spans[1:, 0]))
  i = 0
  for k in repeats:  # few: only where a character is split; each run handled once from its first token
    if k < i:
      continue
    j = k + 1
    while j + 1 < len(spans) and (char_spans[j + 1] == char_spans[k]).all():
      j += 1
    start, end = spans[k, 0], spans[k, 1]  # tokens k .. j share one character span
    ends = np.minimum(start + np.cumsum(np.maximum(lengths[ids[k : j + 1]], 1)), end)
    ends[-1] = end
    spans[k : j + 1, 0] = np.concatenate([[start], ends[:-1]])
    spans[k : j + 1, 1] = ends
    i = j + 1
  return spans.astype(np.int32)


def student_to_teacher(student_json: dict, teacher_json: dict, student_vocab: int) -> np.ndarray:
  """int32 [student_vocab]: the teacher id of each student token with the same byte string, -1 where none."""
  teacher = vocabulary_strings(teacher_json)
  mapping = np.full(student_vocab, -1, np.int32)
  for key, student_id in vocabulary_strings(student_json).items():
    if key in teacher and student_id < student_vocab:
      mapping[student_id] = teacher[key]
  return mapping


def _longest_prefix(key: bytes, student: dict[bytes, int]) -> int:
  for end in range(len(key), 0, -1):
    if key[:end] in student:
      return student[key[:end]]
  return -1


def teacher_to_student(student_tokenizer, teacher_json: dict, student_json: dict, teacher_vocab: int) -> np.ndarray:
  """int32 [teacher_vocab]: for each teacher token, the student token its text starts with when the student
  tokenizes it (the same token where the student has that string; for bytes that are no whole text, the
  longest student token they start with); -1 for a special token the student lacks and for padding rows.

  Summing the teacher's probabilities through this map gives its distribution over the student's next
  token: the teacher's marginal over how the continuation starts in the student's tokens."""
  student = vocabulary_strings(student_json)
  projection = np.full(teacher_vocab, -1, np.int32)
  for key, teacher_id in vocabulary_strings(teacher_json).items():
    if teacher_id >= teacher_vocab:
      continue
    if key in student:
      projection[teacher_id] = student[key]
      continue
    if key.startswith(b"\x00special:"):
      continue
    try:
      ids = student_tokenizer.encode(key.decode("utf-8"))
    except UnicodeDecodeError:
      ids = []
    projection[teacher_id] = ids[0] if ids else _longest_prefix(key, student)
  return projection


def cached_mapping(student_tokenizer, teacher_tokenizer, vocabs: tuple[int, int], cache_dir: str) -> dict:
  """{"student_to_teacher", "teacher_to_student"} of a tokenizer pair for models of `vocabs` (student,
  teacher) rows: read from `cache_dir` when this pair's was saved there, else built and saved (keyed by a
  digest of both tokenizer.json texts and the row counts, so a changed tokenizer gets a new map)."""
  student_json, teacher_json = student_tokenizer.to_json(), teacher_tokenizer.to_json()
  texts = [json.dumps(t, sort_keys=True).encode("utf-8") for t in (student_json, teacher_json)]
  texts.append(repr(tuple(vocabs)).encode("ascii"))
  digest = hashlib.sha256(b"".join(hashlib.sha256(t).digest() for t in texts)).hexdigest()[:16]
  path = storage.join(cache_dir, f"token_mapping_{digest}.json")
  if storage.isfile(path):
    saved = json.loads(storage.read_text(path))
    return {name: np.asarray(ids, np.int32) for name, ids in saved.items()}
  maps = {
    "student_to_teacher": student_to_teacher(student_json, teacher_json, vocabs[0]),
    "teacher_to_student": teacher_to_student(student_tokenizer, teacher_json, student_json, vocabs[1]),
  }
  # rows past both tokenizers (embedding padding) pair by index, as a same-tokenizer run compares them
  padding = np.arange(max(student_tokenizer.vocab_size, teacher_tokenizer.vocab_size), min(vocabs))
  maps["student_to_teacher"][padding] = padding
  maps["teacher_to_student"][padding] = padding
  storage.makedirs(cache_dir)
  storage.write_text_atomic(path, json.dumps({name: ids.tolist() for name, ids in maps.items()}))
  return maps
