"""Offline distillation end to end: the save job's cache against the pipeline and the teacher, resume
after an interruption, the manifest checks, and training from the cache."""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, TINY, free_port, read_metrics, run_processes, run_train, train_losses

from MaxText import pyconfig
from MaxText import save_top_k_teacher_logits as save_job
from MaxText.data import input_pipeline, teacher_cache
from MaxText.model import decoder as model_lib
from MaxText.model import params_io
from MaxText.training.runtime import build_corpus

SAVE_KEYS = {
  "model_name": "tiny",
  "dtype": "float32",
  "max_target_length": 32,
  "per_device_batch_size": 4,
  "steps": 5,
  "kd_offline_top_k": 8,
  "kd_offline_temperatures": "2.0",
  "kd_offline_format": "float",  # the exact teacher values: compared with the live teacher at 1e-5
  "kd_offline_logits_dtype": "float32",
  "kd_offline_batches_per_shard": 2,
}


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
  """Short documents of varied length, so that sequences pack several of them."""
  rng = np.random.default_rng(0)
  words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "in", "mind"]
  path = tmp_path_factory.mktemp("data") / "docs.jsonl"
  with open(path, "w", encoding="utf-8") as f:
    for _ in range(200):
      f.write(json.dumps({"text": " ".join(rng.choice(words, size=rng.integers(1, 5)))}) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  from flax import nnx

  path = str(tmp_path_factory.mktemp("teacher") / "ckpt")
  # a larger init than the student's makes a peaked teacher, far from the near-uniform student
  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "init_std": 0.3})
  _, params, _ = model_lib.split_params(model_lib.Decoder(config, nnx.Rngs(7)))
  params_io.save_params(path, params)
  return path


def _save_config(teacher_dir, out_dir, **extra):
  keys = {**SAVE_KEYS, "use_kd": True, "kd_teacher_parameters_path": teacher_dir, "kd_offline_output_dir": out_dir}
  return pyconfig.from_dict({**keys, **extra})


@pytest.fixture(scope="module")
def cache_dir(teacher_dir, corpus_file, tmp_path_factory):
  SAVE_KEYS.update(dataset_type="jsonl", dataset_path=corpus_file)
  out = str(tmp_path_factory.mktemp("cache") / "cache")
  save_job.save(_save_config(teacher_dir, out))
  return out


@pytest.fixture(scope="module")
def compact_dir(teacher_dir, cache_dir, tmp_path_factory):
  """The same stream and teacher in the compact format (the default)."""
  out = str(tmp_path_factory.mktemp("compact") / "cache")
  save_job.save(_save_config(teacher_dir, out, kd_offline_format="compact"))
  return out


def _raw(shard_file):
  from array_record.python.array_record_module import ArrayRecordReader

  reader = ArrayRecordReader(shard_file)
  records = reader.read_all()
  reader.close()
  return records


def _records(directory):
  from array_record.python.array_record_module import ArrayRecordReader

  manifest = teacher_cache.read_manifest(directory)
  layout = teacher_cache.layout_of(manifest)
  rows = []
  for shard in manifest["shards"]:
    reader = ArrayRecordReader(os.path.join(directory, shard["file"]))
    rows += [layout.decode(r) for r in reader.read_all()]
    reader.close()
  return manifest, rows


def test_cache_holds_the_packed_stream_and_the_teachers_top_k(teacher_dir, cache_dir):
  manifest, rows = _records(cache_dir)
  assert manifest["sequences"] == len(rows) == 5 * 4 and len(manifest["shards"]) == 3  # 2 + 2 + 1 batches
  # kd_offline_format=float writes the format every cache had before format 3, unchanged
  assert manifest["format_version"] == 2 and "record_format" not in manifest and manifest["logits_dtype"] == "float32"
  assert manifest["top_k"] == 8 and manifest["temperatures"] == [1.0, 2.0] and manifest["vocab_size"] == 320
  config = _save_config(teacher_dir, cache_dir)
  it = input_pipeline.make_iterator(config, build_corpus(config), "train", 4)
  expected = [{k: v[i] for k, v in batch.items()} for batch in (next(it) for _ in range(5)) for i in range(4)]
  for got, want in zip(rows, expected, strict=True):
    for name in ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_segmentation"):
      np.testing.assert_array_equal(got[name], want[name])
  assert max(int(r["inputs_segmentation"].max()) for r in rows) > 1  # packing survived
  assert manifest["tokens"] == sum(int(np.count_nonzero(r["targets_segmentation"])) for r in rows)

  graphdef, abstract, _ = model_lib.split_params(model_lib.abstract_model(config))
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  teacher = model_lib.bind(graphdef, params_io.load_params(teacher_dir, abstract, shardings))
  for row in rows[:4]:
    logits = np.asarray(
      teacher.logits(row["inputs"][None], row["inputs_position"][None], row["inputs_segmentation"][None])
    )[0]
    order = np.argsort(-logits, axis=-1)[:, :8]
    np.testing.assert_array_equal(row["teacher_ids"], order)
    np.testing.assert_allclose(row["teacher_values"], np.take_along_axis(logits, order, -1), rtol=1e-5, atol=1e-5)
    for column, temperature in enumerate((1.0, 2.0)):
      lse = np.log(np.sum(np.exp(logits.astype(np.float64) / temperature), -1))
      np.testing.assert_allclose(row["teacher_lse"][column], lse, rtol=1e-5)


def test_rerun_after_an_interrupted_save_gives_the_same_cache(teacher_dir, cache_dir, tmp_path):
  copy = str(tmp_path / "interrupted")
  shutil.copytree(cache_dir, copy)
  # the state a crash while writing the second shard leaves: one shard recorded, a half-written second
  os.remove(os.path.join(copy, teacher_cache.MANIFEST))
  progress_file = teacher_cache.progress_path(copy, 0)
  with open(progress_file, encoding="utf-8") as f:
    progress = json.load(f)
  progress["finished"] = progress["finished"][:1]
  teacher_cache.write_json_atomic(progress_file, progress)
  second = os.path.join(copy, teacher_cache.shard_name(0, 1))
  with open(second, "r+b") as f:
    f.truncate(os.path.getsize(second) // 2)
  os.remove(os.path.join(copy, teacher_cache.shard_name(0, 2)))

  save_job.save(_save_config(teacher_dir, copy))
  for name in sorted(os.listdir(cache_dir)):
    with open(os.path.join(cache_dir, name), "rb") as a, open(os.path.join(copy, name), "rb") as b:
      assert a.read() == b.read(), name

  with pytest.raises(teacher_cache.CacheError, match="holds a cache made with another 'top_k'"):
    save_job.save(_save_config(teacher_dir, copy, kd_offline_top_k=4))


def _offline_run(cache, **extra):
  keys = {"model_name": "tiny", "max_target_length": 32, "use_kd": True, "kd_offline_data_dir": cache}
  return pyconfig.from_dict({**keys, **extra})


def test_manifest_mismatches_and_a_truncated_shard_are_clear_errors(cache_dir, tmp_path):
  _offline_run(cache_dir)  # the matching run is accepted
  _offline_run(cache_dir, kd_temperature=2.0)
  cases = [
    ({"vocab_size": 384}, "vocab_size: the run has 384 but the cache .* was saved with 320"),
    ({"max_target_length": 64}, "max_target_length: the run has 64 but the cache .* was saved with 32"),
    ({"kd_top_k": 16}, "kd_top_k: the run has 16 but the cache .* was saved with 8"),
    ({"kd_temperature": 3.0}, r"kd_temperature: 3.0 is not among the cached temperatures \[1.0, 2.0\]"),
    ({"kd_use_other_bucket": True, "kd_top_k": 8}, "kd_use_other_bucket: cannot be used with kd_offline_data_dir"),
    ({"kd_offline_normalization": "both"}, "kd_offline_normalization: expected one of other_bucket"),
  ]
  for extra, message in cases:
    with pytest.raises(pyconfig.ConfigError, match=message):
      _offline_run(cache_dir, **extra)
  _offline_run(cache_dir, kd_temperature=3.0, kd_offline_approximate_temperature=True)

  tokenizer_file = tmp_path / "tok.json"
  from MaxText.train_tokenizer import main as train_tokenizer

  train_tokenizer(["--type", "bpe", "--vocab_size", "300", "--output", str(tmp_path / "tok")])
  shutil.copy(tmp_path / "tok" / "tokenizer.json", tokenizer_file)
  with pytest.raises(pyconfig.ConfigError, match="tokenizer_path: the run's tokenizer .* is not the one"):
    _offline_run(cache_dir, tokenizer_type="huggingface", tokenizer_path=str(tokenizer_file))

  broken = str(tmp_path / "broken")
  shutil.copytree(cache_dir, broken)
  shard = os.path.join(broken, teacher_cache.shard_name(0, 1))
  size = os.path.getsize(shard)
  with open(shard, "r+b") as f:
    f.truncate(size - 100)
  with pytest.raises(pyconfig.ConfigError, match=f"shard {teacher_cache.shard_name(0, 1)} has {size - 100} bytes"):
    _offline_run(broken)
  os.remove(os.path.join(broken, teacher_cache.MANIFEST))
  with pytest.raises(pyconfig.ConfigError, match="no manifest.json"):
    _offline_run(broken)


def test_the_compact_cache_is_the_float_cache_within_its_code(cache_dir, compact_dir):
  """Same stream, same teacher: the same tokens and ids, the same top-1, the teacher's exact kept mass at
  each stored temperature, and every logit within half a code step of the float value (compact_records)."""
  from MaxText.data.compact_records import ValueCode

  manifest, rows = _records(compact_dir)
  _, float_rows = _records(cache_dir)
  assert manifest["format_version"] == 3 and manifest["record_format"] == "compact"
  code = ValueCode(**manifest["value_code"])
  record_bytes = [len(r) for f in teacher_cache.open_for_run(_offline_run(compact_dir)).shard_files for r in _raw(f)]
  assert max(record_bytes) < 0.5 * teacher_cache.layout_of(teacher_cache.read_manifest(cache_dir)).record_bytes
  step = (1 - np.exp(-code.range / code.scale)) / (code.levels - 1)  # uniform in g(d) = 1 - exp(-d / scale)
  for got, want in zip(rows, float_rows, strict=True):
    for name in teacher_cache.TOKEN_FIELDS:
      np.testing.assert_array_equal(got[name], want[name])
    target = want["targets_segmentation"] != 0
    ids, want_ids = got["teacher_ids"][target], want["teacher_ids"][target]
    np.testing.assert_array_equal(np.sort(ids, 1), np.sort(want_ids, 1))
    np.testing.assert_array_equal(ids[:, 0], want_ids[:, 0])
    values = np.asarray(want["teacher_values"][target], np.float64)
    by_id = np.take_along_axis(values, np.argsort(want_ids, 1), 1)
    decoded = np.take_along_axis(got["teacher_values"][target].astype(np.float64), np.argsort(ids, 1), 1)
    g = lambda d: 1 - np.exp(-np.minimum(d, code.range) / code.scale)  # noqa: E731
    g_true = g(by_id.max(1, keepdims=True) - by_id)
    error = np.abs(g_true - g(decoded.max(1, keepdims=True) - decoded))
    lifted = (g_true > 0) & (g_true < step / 2)  # near-ties given the second code, so the top-1 stays exact
    assert np.all(error[~lifted] <= step / 2 + 1e-6) and np.all(error[lifted] <= step)
    for column, temperature in enumerate(manifest["temperatures"]):
      kept = [
        np.sum(np.exp(r["teacher_values"][target] / temperature - r["teacher_lse"][column][target][:, None]), 1)
        for r in (got, want)
      ]
      np.testing.assert_allclose(kept[0], kept[1], rtol=2e-6)


def test_training_from_the_cache_learns_and_resumes_exactly(compact_dir, tmp_path):
  run = [*TINY, "use_kd=true", f"kd_offline_data_dir={compact_dir}", "kd_alpha=0.9", "kd_temperature=2.0"]
  run += ["steps=8", "learning_rate=2e-2", "checkpoint_period=4"]
  straight = run_train(tmp_path, *run, "run_name=straight")
  assert "OFFLINE" in straight.stdout
  records = [r for r in read_metrics(tmp_path / "straight") if "kd/kl_div_T1" in r]
  assert {"kd/soft_loss", "kd/teacher_mass_kept", "kd/top1_agreement", "kd/student_perplexity"} <= set(records[0])
  kl = [r["kd/kl_div_T1"] for r in records]
  assert np.mean(kl[-3:]) < 0.9 * np.mean(kl[:3])  # the student moves toward the cached teacher

  # the same run resumed by a new process from its step-4 checkpoint: same losses, same cache order
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "8")
  os.remove(tmp_path / "resumed" / "metrics.jsonl")
  assert "resumed from checkpoint at step 4" in run_train(tmp_path, *run, "run_name=resumed").stdout
  first, second = train_losses(tmp_path / "straight"), train_losses(tmp_path / "resumed")
  assert sorted(second) == [5, 6, 7, 8]
  for step in second:
    assert abs(first[step] - second[step]) <= 1e-6 * abs(first[step]), step


def _save_command(teacher_dir, out_dir, *extra):
  keys = {**SAVE_KEYS, "dataset_type": "synthetic", "per_device_batch_size": 2, "steps": 3}
  args = [f"{k}={v}" for k, v in keys.items() if k != "dataset_path"]
  script = os.path.join(REPO, "MaxText", "save_top_k_teacher_logits.py")
  return [
    sys.executable,
    script,
    "base.yml",
    *args,
    f"kd_teacher_parameters_path={teacher_dir}",
    f"kd_offline_output_dir={out_dir}",
    *extra,
  ]


def test_two_hosts_write_a_shard_set_each_that_together_equal_one_hosts_cache(teacher_dir, tmp_path):
  single = str(tmp_path / "single")
  run_processes([_save_command(teacher_dir, single)], devices_each=4)
  multi = str(tmp_path / "multi")
  distributed = ["jax_distributed_initialize=true", f"coordinator_address=127.0.0.1:{free_port()}", "num_processes=2"]
  run_processes([_save_command(teacher_dir, multi, *distributed, f"process_id={i}") for i in range(2)], 2)
  manifest, rows = _records(multi)
  assert {s["process"] for s in manifest["shards"]} == {0, 1} and manifest["process_count"] == 2
  assert manifest["sequences"] == 3 * 8
  _, single_rows = _records(single)
  by_tokens = {r["inputs"].tobytes(): r for r in single_rows}
  assert sorted(by_tokens) == sorted(r["inputs"].tobytes() for r in rows)  # the same sequences, split by host
  for row in rows:
    want = by_tokens[row["inputs"].tobytes()]
    np.testing.assert_array_equal(row["teacher_ids"], want["teacher_ids"])
    np.testing.assert_allclose(row["teacher_values"], want["teacher_values"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(row["teacher_lse"], want["teacher_lse"], rtol=1e-5)
