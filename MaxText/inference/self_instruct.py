"""Self-instruct prompts (the Magpie method): an aligned chat model given only its chat template's text up to
a user turn's content writes a user instruction, which it then answers. Instruction data from the teacher
alone, no corpus.

What is here is the part that needs no model: the user-turn header, the filters an instruction must pass
(it ended at the end-of-turn token; at least `min_words` words; not a near-duplicate of one already kept)
and the held-out split. Near-duplicates are judged lexically: the Jaccard similarity of the two texts'
word 3-gram sets (lower-cased, punctuation dropped) at or above a threshold; the first instruction of a
near-duplicate group (in generation order) is kept. The held-out split is a hash of the normalised
instruction, so it depends on the text alone, not on which host or shard wrote it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from MaxText.config.errors import BadInputError
from MaxText.data import chat

_SENTINEL = "\x00user content\x00"
SHINGLE_WORDS = 3


def opening(system_prompt: str) -> list[dict]:
  """The turns before the user's: `system_prompt` as a system turn, or none (the template's default)."""
  return [{"role": "system", "content": system_prompt}] if system_prompt else []


def user_header(template: str, specials: dict[str, str], system_prompt: str = "") -> str:
  """The rendered text before a first user turn's content: the system turn (`system_prompt`, or the
  template's default if it writes one) and the user header, e.g.
  '<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n'."""
  messages = [*opening(system_prompt), {"role": "user", "content": _SENTINEL}]
  text = chat.render(template, specials, messages, add_generation_prompt=False)
  if _SENTINEL not in text:
    raise BadInputError("chat template: it does not write a user turn's content; no self-instruct header")
  return text[: text.index(_SENTINEL)]


def words(text: str) -> list[str]:
  return re.findall(r"\w+", text.lower())


def shingles(text: str) -> frozenset:
  """The word 3-grams of `text` (a shorter text: its words as one gram)."""
  w = words(text)
  if len(w) < SHINGLE_WORDS:
    return frozenset([tuple(w)])
  return frozenset(tuple(w[i : i + SHINGLE_WORDS]) for i in range(len(w) - SHINGLE_WORDS + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
  return len(a & b) / len(a | b) if a or b else 1.0


class NearDuplicates:
  """Remembers kept texts; `seen(text)` says whether `text` is a near-duplicate of one of them."""

  def __init__(self, threshold: float):
    self.threshold, self.kept = threshold, []

  def seen(self, text: str) -> bool:
    grams = shingles(text)
    return any(jaccard(grams, other) >= self.threshold for other in self.kept)

  def add(self, text: str) -> None:
    self.kept.append(shingles(text))


def is_heldout(text: str, fraction: float) -> bool:
  """Whether an instruction belongs to the held-out split: a hash of its normalised words below `fraction`."""
  digest = hashlib.sha256(" ".join(words(text)).encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < fraction * 2**64


@dataclasses.dataclass
class Dropped:
  """Why candidates were not kept (counts)."""

  instruction_not_stopped: int = 0  # no end-of-turn within generation_instruction_max_tokens
  instruction_too_short: int = 0  # fewer than generation_instruction_min_words words
  near_duplicate: int = 0
  answer_not_stopped: int = 0  # no end-of-turn within decode_max_new_tokens

  def add(self, other: Dropped) -> Dropped:
    return Dropped(**{k: v + getattr(other, k) for k, v in dataclasses.asdict(self).items()})


def instruction_verdict(text: str, stopped: bool, min_words: int, seen: NearDuplicates) -> str:
  """'' when the instruction is kept (and remembered), else the Dropped field it counts under."""
  if not stopped:
    return "instruction_not_stopped"
  if len(words(text)) < min_words:
    return "instruction_too_short"
  if seen.seen(text):
    return "near_duplicate"
  seen.add(text)
  return ""
