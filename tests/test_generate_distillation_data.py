"""Sequence-level KD data: the teacher's answers written as Parquet conversations, resumed after an
interruption to the same files, refused on a foreign folder, and read back by the SFT path."""

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from MaxText import config as config_lib
from MaxText import generate_distillation_data as job
from tests.chat_files import chat_tokenizer_folder
from tests.conftest import TINY, read_metrics, run_train

PROMPTS = [
  [{"role": "user", "content": "Name a colour."}],
  [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there."}],  # answer replaced
  [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is the sea?"}],
  [{"role": "user", "content": "Another?"}],
  [{"role": "user", "content": "Name a colour. " * 20}],  # longer than max_prefill_predict_length: skipped
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from flax import nnx

  from MaxText import pyconfig
  from MaxText.model import decoder, params_io

  root = tmp_path_factory.mktemp("seqkd")
  tokenizer = chat_tokenizer_folder(root / "tok")
  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "init_std": 0.3})
  params_io.save_params(str(root / "teacher"), decoder.split_params(decoder.Decoder(config, nnx.Rngs(3)))[1])
  prompts = root / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"messages": p}) + "\n" for p in PROMPTS))
  return root, tokenizer, prompts


def _argv(root, tokenizer, prompts, out, *extra):
  keys = ["model_name=tiny", "dtype=float32", f"load_parameters_path={root / 'teacher'}", "dataset_type=jsonl"]
  keys += [f"dataset_path={prompts}", "tokenizer_type=huggingface", f"tokenizer_path={tokenizer}"]
  keys += [f"generation_output_dir={out}", "generation_samples_per_prompt=2", "generation_prompts_per_shard=2"]
  keys += ["decode_max_new_tokens=6", "max_prefill_predict_length=64", "per_device_batch_size=3"]
  keys += ["decode_sampling_strategy=nucleus", "decode_sampling_nucleus_p=0.9", *extra]
  return ["base.yml", *keys]


def _rows(out):
  return [r for f in sorted(os.listdir(out)) if f.endswith(".parquet") for r in pq.read_table(out / f).to_pylist()]


@pytest.mark.slow
def test_answers_are_written_resumed_to_the_same_files_and_train_a_student(tmp_path, setup):
  root, tokenizer, prompts = setup
  out = tmp_path / "out"
  manifest = job.run(job.load_config(_argv(root, tokenizer, prompts, out)))
  assert manifest["records"] == 8 and manifest["skipped_long_prompts"] == 1 and len(manifest["shards"]) == 3
  rows = _rows(out)
  assert [(r["prompt_index"], r["sample"]) for r in rows] == [(i, s) for i in range(4) for s in range(2)]
  for row in rows:
    prompt = PROMPTS[row["prompt_index"]]
    prompt = prompt[:-1] if prompt[-1]["role"] == "assistant" else prompt
    assert row["messages"][:-1] == prompt and row["messages"][-1]["role"] == "assistant"
  assert len({r["messages"][-1]["content"] for r in rows}) > 1  # sampled answers differ

  # an interruption after the first shard: the last shards and the manifest are gone
  interrupted = tmp_path / "interrupted"
  shutil.copytree(out, interrupted)
  progress = json.loads((interrupted / "progress-0.json").read_text())
  for shard in progress["shards"][1:]:
    os.remove(interrupted / shard["file"])
  progress["shards"] = progress["shards"][:1]
  (interrupted / "progress-0.json").write_text(json.dumps(progress))
  os.remove(interrupted / "manifest.json")
  assert job.run(job.load_config(_argv(root, tokenizer, prompts, interrupted)))["records"] == 8
  assert _rows(interrupted) == rows

  with pytest.raises(config_lib.ConfigError, match="written with other settings"):
    job.run(job.load_config(_argv(root, tokenizer, prompts, out, "generation_samples_per_prompt=3")))
  (tmp_path / "foreign").mkdir()
  (tmp_path / "foreign" / "notes.txt").write_text("mine")
  with pytest.raises(config_lib.ConfigError, match="holds 'notes.txt', which this job did not write"):
    job.load_config(_argv(root, tokenizer, prompts, tmp_path / "foreign"))

  sft = ["use_sft=true", "dataset_type=parquet", f"dataset_path={out}/part-*.parquet", "eval_fraction=0"]
  sft += ["tokenizer_type=huggingface", f"tokenizer_path={tokenizer}", "max_target_length=64"]
  run_train(tmp_path, *TINY, "run_name=student", "steps=2", *sft)
  assert [r["step"] for r in read_metrics(tmp_path / "student") if "loss" in r] == [1, 2]
