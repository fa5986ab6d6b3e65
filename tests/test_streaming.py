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


def _pretokenize(*keys, cwd=None):
  import sys

  import forked_jobs
  from conftest import REPO

  cmd = [sys.executable, "-m", "MaxText.pretokenize", "base.yml", *keys]
  return forked_jobs.run(cmd, cwd=cwd or REPO, timeout=300)


def test_pretokenized_shards_train_on_the_batches_of_the_text_they_came_from(corpus_files, tmp_path):
  folder, texts = corpus_files
  out = tmp_path / "tokens"
  data = ["dataset_type=jsonl", f"dataset_path={folder}/a.jsonl"]
  proc = _pretokenize(*data, f"pretokenize_output_dir={out}", "pretokenize_documents_per_shard=1000")
  assert proc.returncode == 0, proc.stderr[-2000:]
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["documents"] == 50 and manifest["tokens"] == sum(len(t.encode()) + 2 for t in texts[:50])
  # one shard of the file's documents in order: the same documents, the same split, the same batches
  source = _config(dataset_type="jsonl", dataset_path=f"{folder}/a.jsonl")
  tokens = _config(dataset_type="arrayrecord", dataset_path=str(out / "part-*.array_record"))
  for split, n in (("train", 8), ("eval", 1)):
    want, _ = _take(source, input_pipeline.Corpus(source, ByteTokenizer()), n, split)
    got, _ = _take(tokens, input_pipeline.Corpus(tokens, None), n, split)
    _same(got, want)
  # a folder holding someone else's files is refused before anything is written
  again = _pretokenize(*data, f"pretokenize_output_dir={folder}", "pretokenize_documents_per_shard=1000")
  assert (
    again.returncode == 2
    and "pretokenize_output_dir:" in again.stderr
    and "which this job did not write" in again.stderr
  )


@pytest.mark.slow
def test_two_processes_tokenize_a_file_share_each_that_together_hold_every_document(corpus_files, tmp_path):
  import sys

  from conftest import free_port, run_processes

  folder, texts = corpus_files
  for i in range(4):  # four files, two per process
    (tmp_path / f"part{i}.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts[i * 30 : (i + 1) * 30]))
  out = tmp_path / "tokens"
  port = free_port()
  keys = ["dataset_type=jsonl", f"dataset_path={tmp_path}/part*.jsonl", f"pretokenize_output_dir={out}"]
  keys += [
    "pretokenize_documents_per_shard=20",
    "jax_distributed_initialize=true",
    f"coordinator_address=127.0.0.1:{port}",
  ]
  commands = [
    [sys.executable, "-m", "MaxText.pretokenize", "base.yml", *keys, "num_processes=2", f"process_id={p}"]
    for p in range(2)
  ]
  run_processes(commands, devices_each=1)
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["documents"] == 120 and {s["process"] for s in manifest["shards"]} == {0, 1}
  assert len(manifest["shards"]) == 6  # 60 documents per process, 20 per shard
  from array_record.python.array_record_module import ArrayRecordReader

  decoded = []
  for shard in manifest["shards"]:
    reader = ArrayRecordReader(str(out / shard["file"]))
    decoded += [ByteTokenizer().decode(np.frombuffer(r, np.int32).tolist()) for r in reader.read_all()]
    reader.close()
  assert sorted(decoded) == sorted(texts)


@pytest.mark.slow
def test_a_run_with_workers_resumes_exactly_and_trains_on_what_a_run_without_them_does(corpus_files, tmp_path):
  import os
  import shutil

  from conftest import TINY, run_train, train_losses

  folder, _ = corpus_files
  data = ["dataset_type=jsonl", f"dataset_path={folder}/a.jsonl,{folder}/b.jsonl", "steps=6", "checkpoint_period=3"]
  run_train(tmp_path, *TINY, *data, "run_name=plain", "learning_rate=3e-3")
  run_train(tmp_path, *TINY, *data, "run_name=workers", "learning_rate=3e-3", "grain_worker_count=2")
  plain, workers = train_losses(tmp_path / "plain"), train_losses(tmp_path / "workers")
  assert sorted(workers) == list(range(1, 7))
  for step in plain:  # the same batches: identical losses
    assert workers[step] == plain[step], step
  # a new process resumes the worker run from step 3 (its later checkpoint removed)
  shutil.rmtree(tmp_path / "workers" / "checkpoints" / "6")
  os.remove(tmp_path / "workers" / "metrics.jsonl")
  proc = run_train(tmp_path, *TINY, *data, "run_name=workers", "learning_rate=3e-3", "grain_worker_count=2")
  assert "resumed from checkpoint at step 3" in proc.stdout
  resumed = train_losses(tmp_path / "workers")
  assert sorted(resumed) == [4, 5, 6]
  for step in resumed:
    assert abs(resumed[step] - plain[step]) <= 1e-6 * abs(plain[step]), step


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_record_met_mid_stream_is_one_line_naming_its_line(tmp_path, workers):
  lines = [json.dumps({"text": f"record {i} " * 20}) for i in range(40)]
  lines[17] = '{"text": null}'
  (tmp_path / "d.jsonl").write_text("\n".join(lines))
  path = str(tmp_path / "d.jsonl")
  config = _config(dataset_type="jsonl", dataset_path=path, eval_fraction=0.0, grain_worker_count=workers)
  it = input_pipeline.make_iterator(config, input_pipeline.Corpus(config, ByteTokenizer()), "train", 4)
  with pytest.raises(ValueError) as caught:
    for _ in range(200):
      next(it)
  assert str(caught.value) == f"data_column: {tmp_path / 'd.jsonl'}:18 field 'text' is null, not text"
