"""One text, two token streams: the student's windows and the teacher's tokens of the same characters.

For cross-tokenizer KD (kd_teacher_tokenizer_path) each document is tokenized by both tokenizers with
character offsets. The student's stream is cut into windows exactly as a same-tokenizer run cuts it
(data/input_pipeline.py); each window's teacher part is the teacher's tokens that lie inside the
characters of the window's targets (at most kd_teacher_max_target_length of them), preceded by the
teacher token before them as context. Spans are in UTF-8 bytes (token_alignment.byte_spans).
token_alignment.align pairs the two sides' targets into groups; per student target the example carries:
  kd_head          1 on the first token of a group (where the KD term sits), else 0
  kd_teacher_head  index of that group's first teacher target in the teacher row
  kd_single        1 when the group is one token on each side (the exact-match candidates)
  kd_aligned       1 on every token of a group (the text that bits per byte are measured on)
  kd_bytes         UTF-8 bytes of the target's characters
and per teacher target kd_teacher_aligned (1 inside a group). Packing packs both streams together
(an example goes into a row only if both parts fit), and the indices are then moved to row positions.
"""

from __future__ import annotations

import grain
import numpy as np

from MaxText.config.errors import BadInputError
from MaxText.data.token_alignment import align, byte_spans, token_byte_lengths

STUDENT_FIELDS = ("inputs", "targets", "kd_head", "kd_teacher_head", "kd_single", "kd_aligned", "kd_bytes")
TEACHER_FIELDS = ("teacher_inputs", "teacher_targets", "kd_teacher_aligned")


def encode_with_spans(tokenizer, text: str, add_bos: bool, add_eos: bool, lengths, char_bytes):
  """(int32 ids, int32 [n, 2] UTF-8 byte spans) with BOS / EOS (empty spans at the text's ends)."""
  ids, spans = tokenizer.encode_with_offsets(text)
  ids, spans = list(ids), [tuple(s) for s in spans]
  if add_bos and tokenizer.bos_id is not None:
    ids, spans = [tokenizer.bos_id, *ids], [(0, 0), *spans]
  if add_eos and tokenizer.eos_id is not None:
    ids, spans = [*ids, tokenizer.eos_id], [*spans, (len(text), len(text))]
  ids = np.asarray(ids, np.int32)
  return ids, byte_spans(np.asarray(spans, np.int64).reshape(-1, 2), ids, char_bytes, lengths)


def utf8_lengths(text: str) -> np.ndarray:
  """int64 [len(text)]: each character's UTF-8 length, from its code point (no loop over characters)."""
  points = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), np.uint32)
  return 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000).astype(np.int64)


class TwoStreamEncode:
  """Text -> both tokenizations with byte spans. Runs in the Grain workers."""

  def __init__(self, student_tokenizer, teacher_tokenizer, add_bos: bool, add_eos: bool):
    for where, tokenizer in (("tokenizer_path", student_tokenizer), ("kd_teacher_tokenizer_path", teacher_tokenizer)):
      if not hasattr(tokenizer, "encode_with_offsets"):
        raise BadInputError(
          f"{where}: cross-tokenizer KD needs each token's character offsets, which only a Hugging Face "
          f"tokenizer.json gives (got a {type(tokenizer).__name__})"
        )
    self.student, self.teacher = student_tokenizer, teacher_tokenizer
    self.lengths = [token_byte_lengths(t.to_json(), t.vocab_size) for t in (student_tokenizer, teacher_tokenizer)]
    self.add_bos, self.add_eos = add_bos, add_eos

  def __call__(self, document):
    """A text, or a conversation as data/sft.conversation_text gives it (then each side's tokens inside
    its trained character ranges are marked, `s_trained` / `t_trained`)."""
    conversation = isinstance(document, dict)
    text = document["text"] if conversation else document
    if not isinstance(text, str):
      raise BadInputError("kd_teacher_tokenizer_path: cross-tokenizer KD reads text, not pre-tokenized records")
    char_bytes = utf8_lengths(text)
    # a conversation gets no BOS / EOS added (as in data/sft.py): its template wrote what it needs
    bos, eos = (False, False) if conversation else (self.add_bos, self.add_eos)
    s_ids, s_spans = encode_with_spans(self.student, text, bos, eos, self.lengths[0], char_bytes)
    t_ids, t_spans = encode_with_spans(self.teacher, text, bos, eos, self.lengths[1], char_bytes)
    doc = {"s_ids": s_ids, "s_spans": s_spans, "t_ids": t_ids, "t_spans": t_spans}
    doc["t_bounds"] = np.ascontiguousarray(t_spans.T)  # starts and ends as rows: binary searches per window
    if conversation:
      ranges = np.concatenate([[0], np.cumsum(char_bytes)])[document["trained"]].reshape(-1, 2)
      doc["s_trained"], doc["t_trained"] = _inside(s_spans, ranges), _inside(t_spans, ranges)
    return doc


def _inside(spans: np.ndarray, ranges: np.ndarray) -> np.ndarray:
  """int32 [n]: 1 where a token's nonempty byte span lies inside one of the ranges."""
  inside = (spans[:, None, 0] >= ranges[None, :, 0]) & (spans[:, None, 1] <= ranges[None, :, 1])
  return (inside.any(axis=1) & (spans[:, 1] > spans[:, 0])).astype(np.int32)


def _teacher_targets(t_spans: np.ndarray, first_byte: int, last_byte: int, limit: int) -> range:
  """Teacher target indices (>= 1: index 0 has no context) whose bytes lie in [first_byte, last_byte).
  Spans run in text order, so two binary searches find them (`t_spans`: the starts and the ends, each
  a contiguous row, as TwoStreamEncode keeps them)."""
  first = max(1, int(np.searchsorted(t_spans[0], t_spans.dtype.type(first_byte), side="left")))
  stop = int(np.searchsorted(t_spans[1], t_spans.dtype.type(last_byte), side="right"))
  return range(first, min(stop, first + limit)) if stop > first else range(0)


def window_example(doc: dict, start: int, length: int, teacher_length: int) -> dict:
  """The example of the student window that starts at token `start` (inputs start .. start + length - 1)."""
  s_ids, s_spans, t_ids, t_spans = doc["s_ids"], doc["s_spans"], doc["t_ids"], doc["t_spans"]
  stop = min(start + length + 1, len(s_ids))
  s_targets = range(start + 1, stop)
  target_spans = s_spans[start + 1 : stop]
  nonempty = target_spans[:, 1] > target_spans[:, 0]
  t_range = range(0)
  if nonempty.any():
    first, last = int(target_spans[nonempty, 0].min()), int(target_spans[:, 1].max())
    t_range = _teacher_targets(doc["t_bounds"], first, last, teacher_length)
  n_s, n_t = len(s_targets), max(len(t_range), 1)
  fields = {name: np.zeros(n_s, np.int32) for name in STUDENT_FIELDS[2:]}
  teacher_aligned = np.zeros(n_t, np.int32)
  groups = align(target_spans.tolist(), t_spans[t_range.start : t_range.stop].tolist()) if len(t_range) else []
  for group in groups:
    head = group.student.start
    fields["kd_head"][head] = 1
    fields["kd_teacher_head"][head] = group.teacher.start
    fields["kd_single"][head] = int(len(group.student) == 1 and len(group.teacher) == 1)
    fields["kd_aligned"][group.student.start : group.student.stop] = 1
    teacher_aligned[group.teacher.start : group.teacher.stop] = 1
  fields["kd_bytes"] = (target_spans[:, 1] - target_spans[:, 0]).astype(np.int32)
  # no teacher text in this window (only special tokens): one placeholder pair, aligned with nothing
  teacher_tokens = t_ids[t_range.start - 1 : t_range.stop] if len(t_range) else np.zeros(2, np.int32)
  example = {
    "inputs": s_ids[start : stop - 1],
    "targets": s_ids[start + 1 : stop],
    **fields,
    "teacher_inputs": teacher_tokens[:-1],
    "teacher_targets": teacher_tokens[1:],
    "kd_teacher_aligned": teacher_aligned,
  }
  if "s_trained" in doc:  # a conversation: only the assistant's text is learned and measured
    example["targets_mask"] = doc["s_trained"][start + 1 : stop]
    example["kd_aligned"] = example["kd_aligned"] * example["targets_mask"]
    if len(t_range):
      example["kd_teacher_aligned"] = teacher_aligned * doc["t_trained"][t_range.start : t_range.stop]
  return example


class TwoStreamWindows(grain.experimental.FlatMapTransform):
  """A document's windows of max_target_length student tokens, each with its teacher part."""

  def __init__(self, length: int, teacher_length: int, num_documents: int, sft: bool = False):
    self.length, self.teacher_length, self.num_documents = length, teacher_length, num_documents
    self.sft = sft  # a conversation is one example, cut to its first window (as data/sft.py cuts it)
    self.max_fan_out = 1 << 20
    self._empty_in_a_row = 0

  def flat_map(self, doc):
    starts = range(0, len(doc["s_ids"]) - 1, self.length) if len(doc["s_ids"]) >= 2 else range(0)
    examples = [
      window_example(doc, start, self.length, self.teacher_length) for start in starts[: 1 if self.sft else None]
    ]
    if self.sft:  # nothing to learn from a conversation whose assistant text lies beyond the window
      examples = [ex for ex in examples if ex["targets_mask"].any()]
    self._empty_in_a_row = 0 if examples else self._empty_in_a_row + 1
    if self._empty_in_a_row > self.num_documents:
      what = "has an assistant token within max_target_length" if self.sft else "yields two tokens"
      raise BadInputError(f"dataset_path: none of the {self.num_documents} documents {what}")
    return examples


def _row_starts(segment_ids: np.ndarray, positions: np.ndarray) -> dict[int, int]:
  """segment id -> index of its first token in a packed row."""
  firsts = np.flatnonzero((positions == 0) & (segment_ids > 0))
  return {int(segment_ids[i]): int(i) for i in firsts}


def _to_row_indices(example: dict) -> dict:
  """kd_teacher_head from segment-local to row indices (after packing several examples into a row)."""
  heads = example["kd_teacher_head"].copy()
  starts = _row_starts(example["teacher_inputs_segment_ids"], example["teacher_inputs_positions"])
  for i in np.flatnonzero(example["kd_head"]):
    heads[i] += starts[int(example["inputs_segment_ids"][i])]
  return {**example, "kd_teacher_head": heads}


def _padded(example: dict, length: int, teacher_length: int, student_fields: tuple[str, ...]) -> dict:
  """One example per row (packing off): padded, with segment id 1 and positions on both streams."""
  out = {}
  for names, size, prefix in ((student_fields, length, "inputs"), (TEACHER_FIELDS, teacher_length, "teacher_inputs")):
    n = len(example[names[0]])
    for name in names:
      out[name] = np.pad(example[name], (0, size - n))
    out[f"{prefix}_segment_ids"] = np.pad(np.ones(n, np.int32), (0, size - n))
    out[f"{prefix}_positions"] = np.pad(np.arange(n, dtype=np.int32), (0, size - n))
  return out


def pack_rows(config, it_ds: grain.IterDataset, batch_size: int, teacher_length: int) -> grain.IterDataset:
  """Examples -> rows of both streams (packed together, or padded one per row)."""
  length = config.max_target_length
  student_fields = STUDENT_FIELDS + (("targets_mask",) if config.use_sft else ())
  if not config.packing:
    return it_ds.map(lambda ex: _padded(ex, length, teacher_length, student_fields))
  sizes = {**dict.fromkeys(student_fields, length), **dict.fromkeys(TEACHER_FIELDS, teacher_length)}
  packed = grain.experimental.FirstFitPackIterDataset(
    it_ds,
    length_struct=sizes,
    num_packing_bins=batch_size,
    shuffle_bins=False,
    max_sequences_per_bin=config.max_segments_per_seq,
  )
  return packed.map(_to_row_indices)


def to_batch_names(batch: dict) -> dict:
  """MaxText's names for the student stream, teacher_* for the teacher's, the alignment fields as they are."""
  segmentation = batch["inputs_segment_ids"]
  teacher_segmentation = batch["teacher_inputs_segment_ids"]
  # a conversation's target outside the assistant's turns is no target (segmentation 0), as in SFT
  targets_segmentation = segmentation * batch["targets_mask"] if "targets_mask" in batch else segmentation
  return {
    "inputs": batch["inputs"],
    "inputs_position": batch["inputs_positions"],
    "inputs_segmentation": segmentation,
    "targets": batch["targets"],
    "targets_segmentation": targets_segmentation,
    "teacher_inputs": batch["teacher_inputs"],
    "teacher_inputs_position": batch["teacher_inputs_positions"],
    "teacher_inputs_segmentation": teacher_segmentation,
    "teacher_targets": batch["teacher_targets"],
    "teacher_targets_segmentation": teacher_segmentation * batch["kd_teacher_aligned"],
    **{name: batch[name] for name in STUDENT_FIELDS[2:]},
  }
