"""Input pipelines and tokenizers: packing fields, sources, split, iterator state, errors."""

import json
import re

import numpy as np
import pytest

from MaxText import pyconfig
from MaxText.data import input_pipeline
from MaxText.data.tokenizer import ByteTokenizer, build_tokenizer, check_fits_model
from MaxText.train_tokenizer import main as train_tokenizer


def _config(**overrides):
  return pyconfig.from_dict({"model_name": "tiny", "max_target_length": 16, **overrides})


def _batches(config, n, split="train", batch_size=4):
  corpus = None if config.dataset_type == "synthetic" else input_pipeline.Corpus(config, ByteTokenizer())
  it = input_pipeline.make_iterator(config, corpus, split, batch_size)
  return [next(it) for _ in range(n)], it


def _targets(corpus):
  """Targets per window over every document of the corpus."""
  docs = corpus.documents
  cut = [input_pipeline.windows(corpus.encode(docs[i]), 16) for i in range(len(docs))]
  return [len(w) - 1 for doc_windows in cut for w in doc_windows]


def _check_packed_fields(batch):
  seg, pos = batch["inputs_segmentation"], batch["inputs_position"]
  assert seg.shape == pos.shape == batch["targets"].shape
  np.testing.assert_array_equal(seg, batch["targets_segmentation"])
  for row_seg, row_pos in zip(seg, pos, strict=True):
    for s in set(row_seg[row_seg > 0].tolist()):
      np.testing.assert_array_equal(row_pos[row_seg == s], np.arange((row_seg == s).sum()))
  assert (batch["inputs"][seg == 0] == 0).all()


def test_text_windows_pack_and_targets_are_next_tokens(tmp_path):
  docs = ["first document " * 3, "second one", "third document, a bit longer than sixteen bytes"]
  for i, d in enumerate(docs):
    (tmp_path / f"doc{i}.txt").write_text(d)
  config = _config(dataset_path=str(tmp_path), eval_fraction=0.0)
  (batch,), _ = _batches(config, 1, batch_size=8)
  _check_packed_fields(batch)
  seg = batch["inputs_segmentation"]
  # within a segment, targets are the inputs shifted by one
  for row in range(seg.shape[0]):
    for s in set(seg[row][seg[row] > 0].tolist()):
      ins, tgt = batch["inputs"][row][seg[row] == s], batch["targets"][row][seg[row] == s]
      np.testing.assert_array_equal(ins[1:], tgt[:-1])
  # every document byte is a target exactly once across the epoch's windows
  corpus = input_pipeline.Corpus(config, ByteTokenizer())
  assert sum(_targets(corpus)) == sum(len(d.encode()) + 1 for d in docs)


def test_default_text_corpus_is_shakespeare_and_split_holds_out_whole_documents():
  config = _config()
  corpus = input_pipeline.Corpus(config, ByteTokenizer())
  assert len(input_pipeline.shakespeare_files()) == len(corpus.documents) == 42  # a play is a document
  is_eval = corpus.documents.held_out(0.05, input_pipeline._SPLIT_SEED)
  train = input_pipeline.split_indices(is_eval, "train")
  evals = input_pipeline.split_indices(is_eval, "eval")
  assert len(evals) >= 1 and not set(train) & set(evals) and len(train) + len(evals) == 42
  np.testing.assert_array_equal(is_eval, corpus.documents.held_out(0.05, input_pipeline._SPLIT_SEED))
  # two hosts split the plays by file and agree on which are held out
  halves = [input_pipeline.open_documents(config, p, 2) for p in range(2)]
  assert sorted(f for h in halves for f in h.files) == sorted(input_pipeline.shakespeare_files())
  marks = dict(zip(corpus.documents.files, is_eval, strict=True))
  for half in halves:
    assert [marks[f] for f in half.files] == half.held_out(0.05, input_pipeline._SPLIT_SEED).tolist()


def test_eval_split_is_by_document_for_jsonl_records(tmp_path):
  # every record repeats its own id, so a window's bytes say which document it came from
  texts = [f"<{i:03d}>" * 40 for i in range(60)]
  (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
  config = _config(dataset_type="jsonl", dataset_path=str(tmp_path / "d.jsonl"), eval_fraction=0.2, packing=False)
  seen = {}
  for split in ("train", "eval"):
    batches, _ = _batches(config, 30, split=split)
    rows = [ByteTokenizer().decode(row.tolist()) for b in batches for row in b["inputs"]]
    seen[split] = {m for row in rows for m in re.findall(r"<(\d{3})>", row)}
  assert seen["eval"] and seen["train"] and not seen["eval"] & seen["train"]


def test_a_separate_eval_data_set_feeds_eval_and_none_of_it_trains(tmp_path):
  (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"text": "t" * 30}) for _ in range(10)))
  (tmp_path / "eval.txt").write_text("e" * 200)
  config = _config(
    dataset_type="jsonl",
    dataset_path=str(tmp_path / "train.jsonl"),
    eval_dataset_path=str(tmp_path / "eval.txt"),
    eval_dataset_type="text",
    eval_fraction=0.5,  # unused with a separate eval set: every train record trains
  )
  train, _ = _batches(config, 5)
  evals, _ = _batches(config, 3, split="eval")
  train_bytes = set(np.concatenate([b["inputs"][b["inputs_segmentation"] > 0] for b in train]).tolist())
  eval_bytes = set(np.concatenate([b["inputs"][b["inputs_segmentation"] > 0] for b in evals]).tolist())
  bos_eos = {1, 2}
  assert train_bytes - bos_eos == {ord("t") + 3} and eval_bytes - bos_eos == {ord("e") + 3}  # bytes shift by 3
  corpus = input_pipeline.Corpus(config, ByteTokenizer())
  assert len(input_pipeline._split(config, corpus, "train")[1]) == len(corpus.documents)  # nothing held out
  with pytest.raises(ValueError, match="eval_dataset_type: 'text' describes eval_dataset_path, which is empty"):
    _config(eval_dataset_type="text")


def test_one_document_has_no_eval_split_and_says_what_to_do(tmp_path):
  (tmp_path / "a.txt").write_text("one long document " * 20)
  config = _config(dataset_path=str(tmp_path / "a.txt"))
  with pytest.raises(ValueError, match="eval_fraction: the eval split of dataset_path is empty \\(1 document"):
    _batches(config, 1, split="eval")


def test_iterator_state_round_trip_reproduces_the_next_batches():
  config = _config()
  _, it = _batches(config, 3)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  _, fresh = _batches(config, 0)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_shuffle_seed_changes_the_order():
  (a,), _ = _batches(_config(data_shuffle_seed=0), 1)
  (b,), _ = _batches(_config(data_shuffle_seed=1), 1)
  assert not np.array_equal(a["inputs"], b["inputs"])


def test_jsonl_and_parquet_sources(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  texts = [f"record number {i} says something" for i in range(20)]
  (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in texts))
  pq.write_table(pa.table({"body": texts}), tmp_path / "d.parquet")
  for kind, path in (("jsonl", tmp_path / "d.jsonl"), ("parquet", tmp_path / "d.parquet")):
    config = _config(dataset_type=kind, dataset_path=str(path), data_column="body")
    corpus = input_pipeline.Corpus(config, ByteTokenizer())
    assert sum(_targets(corpus)) == sum(len(t.encode()) + 1 for t in texts)
    (batch,), _ = _batches(config, 1)
    _check_packed_fields(batch)
  with pytest.raises(KeyError, match="data_column: .* has no field 'text'"):
    input_pipeline.Corpus(_config(dataset_type="jsonl", dataset_path=str(tmp_path / "d.jsonl")), ByteTokenizer())


def test_arrayrecord_pretokenized_source(tmp_path):
  from array_record.python.array_record_module import ArrayRecordWriter

  path = str(tmp_path / "data.arrayrecord")
  writer = ArrayRecordWriter(path, "group_size:1")
  docs = [np.arange(3, 3 + n, dtype=np.int32) for n in (5, 40, 17, 9)]
  for d in docs:
    writer.write(d.tobytes())
  writer.close()
  config = _config(dataset_type="arrayrecord", dataset_path=path, eval_fraction=0.0)
  corpus = input_pipeline.Corpus(config, None)
  it = input_pipeline.make_iterator(config, corpus, "train", 2)
  batch = next(it)
  _check_packed_fields(batch)
  assert batch["inputs"].max() < 3 + 40


def test_synthetic_source_is_deterministic():
  (a,), _ = _batches(_config(dataset_type="synthetic"), 1)
  (b,), _ = _batches(_config(dataset_type="synthetic"), 1)
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert (a["inputs_segmentation"] == 1).all()


def test_unpacked_rows_are_padded_with_segment_zero(tmp_path):
  (tmp_path / "a.txt").write_text("short")
  config = _config(dataset_path=str(tmp_path / "a.txt"), packing=False, eval_fraction=0.0)
  (batch,), _ = _batches(config, 1, batch_size=1)
  assert batch["inputs_segmentation"][0].tolist() == [1] * 6 + [0] * 10


def test_unreadable_data_path_is_a_clear_error():
  with pytest.raises(FileNotFoundError, match="dataset_path: no readable files match '/no/such/\\*.txt'"):
    input_pipeline.Corpus(_config(dataset_path="/no/such/*.txt"), ByteTokenizer())


def test_trained_bpe_and_sentencepiece_tokenizers_round_trip(tmp_path):
  text = "To be, or not to be, that is the question."
  for kind, kind_key, file in (
    ("bpe", "huggingface", "tokenizer.json"),
    ("sentencepiece", "sentencepiece", "tokenizer.model"),
  ):
    out = tmp_path / kind
    train_tokenizer(["--type", kind, "--vocab_size", "512", "--output", str(out)])
    tok = build_tokenizer(kind_key, str(out / file))
    assert tok.vocab_size == 512 and tok.bos_id == 1 and tok.eos_id == 2
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text.encode())
    check_fits_model(tok, 512)
    with pytest.raises(ValueError, match="vocab_size: the tokenizer has 512 tokens but the model's vocab_size is 320"):
      check_fits_model(tok, 320)


def test_packing_puts_at_most_max_segments_per_seq_documents_in_a_row(tmp_path):
  (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": "ab"}) for _ in range(200)))  # 4 tokens each
  most = {}
  for cap in (64, 3):
    config = _config(dataset_type="jsonl", dataset_path=str(tmp_path / "d.jsonl"), max_segments_per_seq=cap)
    batches, _ = _batches(config, 4)
    most[cap] = max(int(b["inputs_segmentation"].max()) for b in batches)
  assert most[3] == 3 and most[64] > 3  # a 16-token row holds 4 such documents unless capped


def _eval_set(tmp_path, **overrides):
  from MaxText.data import eval_set

  config = _config(
    dataset_type="text",
    dataset_path=str(tmp_path / "train.txt"),
    eval_dataset_path=str(tmp_path / "eval.txt"),
    add_bos=False,
    add_eos=False,
    **overrides,
  )
  return eval_set.build(config, input_pipeline.Corpus(config, ByteTokenizer()), 2)


def test_eval_windows_spread_over_the_eval_set_or_cover_it_whole(tmp_path):
  # one 800-byte eval document whose k-th 16-byte run is the letter 65 + k: 50 windows (16 targets each, 15 in
  # the last; 799 in all), the first input byte of window k is 65 + k + 3 (byte ids shift by 3); 2 batches of
  # 2 rows score 4 of them.
  (tmp_path / "train.txt").write_text("t" * 100)
  (tmp_path / "eval.txt").write_text("".join(chr(65 + k) * 16 for k in range(50)))
  window_of = lambda chosen: [int(row[0]) - 68 for b in chosen.batches for row in b["inputs"]]
  start = _eval_set(tmp_path, eval_steps=2, eval_sampling="start")
  assert window_of(start) == [0, 1, 2, 3]
  spread = _eval_set(tmp_path, eval_steps=2)
  chosen = window_of(spread)
  assert chosen == window_of(_eval_set(tmp_path, eval_steps=2))  # the same windows every time
  assert max(chosen) > 3 and len(set(chosen)) == 4  # drawn across the document, none twice
  scored = sum(15 if k == 49 else 16 for k in chosen)
  assert (spread.scored_tokens, spread.total_tokens) == (scored, 799)
  assert spread.coverage() == f"; {100 * scored / 799:.1f}% of the eval set's 799 target tokens"
  whole = _eval_set(tmp_path, eval_steps=-1)
  assert whole.scored_tokens == whole.total_tokens == 799 and len(whole.batches) == 25  # 50 rows, 2 per batch
  targets = np.concatenate([b["targets"][b["targets_segmentation"] > 0] for b in whole.batches])
  assert sorted(targets.tolist()) == sorted(65 + i // 16 + 3 for i in range(1, 800))  # every target once
