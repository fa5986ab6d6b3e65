"""The lazy (streaming) input pipeline: the same batches as documents read eagerly into memory, with and
without Grain worker processes, and an exact resume from the iterator state with workers."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from MaxText import pyconfig
from MaxText.data import documents, input_pipeline
from MaxText.data.tokenizer import ByteTokenizer


def _texts(n=120, seed=0):
  rng = np.random.default_rng(seed)
  words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "in", "mind"]
  return [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(n)]


def _config(**keys):
  return pyconfig.from_dict({"model_name": "tiny", "max_target_length": 32, "eval_fraction": 0.1, **keys})


def _take(config, corpus, n, split="train"):
  it = input_pipeline.make_iterator(config, corpus, split, 4)
  return [next(it) for _ in range(n)], it


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("corpus")
  texts = _texts()
  # two JSONL files (one with blank lines), a Parquet file of two row groups, a folder of text files
  (folder / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts[:50]) + "\n")
  (folder / "b.jsonl").write_text("\n\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts[50:])))
  pq.write_table(pa.table({"text": texts}), folder / "c.parquet", row_group_size=70)
  (folder / "txt").mkdir()
  for i, t in enumerate(texts[:30]):
    (folder / "txt" / f"{i:03d}.txt").write_text(t)
  return folder, texts


class EagerDocuments(documents.InMemoryDocuments):
  """The same texts held in memory (no offsets, no row groups), with the lazy source's eval marks."""

  def __init__(self, texts, lazy):
    super().__init__(texts)
    self.held_out = lazy.held_out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", ["jsonl", "parquet", "text"])
def test_lazy_documents_give_the_batches_of_eagerly_read_ones(corpus_files, kind, workers):
  folder, texts = corpus_files
  path = {"jsonl": f"{folder}/a.jsonl,{folder}/b.jsonl", "parquet": f"{folder}/c.parquet", "text": f"{folder}/txt"}
  expected_texts = texts[:30] if kind == "text" else texts
  config = _config(dataset_type=kind, dataset_path=path[kind], grain_worker_count=workers)
  lazy = input_pipeline.Corpus(config, ByteTokenizer())
  assert [lazy.documents[i] for i in range(len(lazy.documents))] == expected_texts
  reference_config = _config(dataset_type=kind, dataset_path=path[kind])
  reference = input_pipeline.Corpus(reference_config, ByteTokenizer())
  reference.documents = EagerDocuments(expected_texts, lazy.documents)
  for split, n in (("train", 12), ("eval", 2)):
    got, _ = _take(config, lazy, n, split)
    want, _ = _take(reference_config, reference, n, split)
    _same(got, want)


def test_resume_with_workers_continues_with_the_exact_next_batches(corpus_files):
  folder, _ = corpus_files
  config = _config(dataset_type="jsonl", dataset_path=f"{folder}/a.jsonl,{folder}/b.jsonl", grain_worker_count=2)
  corpus = input_pipeline.Corpus(config, ByteTokenizer())
  _, it = _take(config, corpus, 5)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  fresh = input_pipeline.make_iterator(config, corpus, "train", 4)
  fresh.set_state(state)
  _same([next(fresh) for _ in range(4)], expected)
  # the same stream without workers: the worker count does not change the data
  plain = _config(dataset_type="jsonl", dataset_path=f"{folder}/a.jsonl,{folder}/b.jsonl")
  first, _ = _take(plain, corpus, 9)
  _same(first[5:], expected)
