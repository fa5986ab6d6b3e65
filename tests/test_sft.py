"""SFT data: chat-template rendering, the assistant-only loss mask, packing of whole conversations, and
training on it with plain CE, online KD and offline KD."""

import json

import numpy as np
import pytest

from MaxText import config as config_lib
from MaxText import pyconfig
from MaxText.data import chat, input_pipeline, sft
from MaxText.data.tokenizer import HuggingFaceTokenizer
from MaxText.training.runtime import build_corpus
from tests.chat_files import chat_tokenizer_folder
from tests.conftest import TINY, read_metrics, run_train

CONVERSATIONS = [
  [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
  [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Blue."},
  ],
  [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there."}],
  [{"role": "user", "content": "What is the sea?"}, {"role": "assistant", "content": "Water."}],
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  return chat_tokenizer_folder(tmp_path_factory.mktemp("chat") / "tok")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("sft") / "chats.jsonl"
  with open(path, "w", encoding="utf-8") as f:
    for i in range(40):  # ten copies, so that eval and several packed rows exist
      f.write(json.dumps({"messages": CONVERSATIONS[i % 4], "id": i}) + "\n")
  return path


def _keys(tokenizer_dir, data_file, **extra):
  keys = {"model_name": "tiny", "dtype": "float32", "max_target_length": 64, "per_device_batch_size": 4}
  keys.update(use_sft=True, dataset_type="jsonl", dataset_path=str(data_file), eval_fraction=0.1)
  keys.update(tokenizer_type="huggingface", tokenizer_path=str(tokenizer_dir))
  return {**keys, **extra}


def test_only_assistant_turns_and_their_end_of_turn_are_trained(tokenizer_dir):
  tokenizer = HuggingFaceTokenizer(str(tokenizer_dir))
  template = chat.read_chat_template(str(tokenizer_dir))
  tokens, trained = sft.encode_conversation(tokenizer, template, CONVERSATIONS[1], True, "test")
  decode = lambda ids: tokenizer._tok.decode(ids, skip_special_tokens=False)
  assert decode(tokens.tolist()) == chat.render(*template, CONVERSATIONS[1], False)
  spans, start = [], None  # the trained runs of tokens, decoded
  for i, flag in enumerate([*trained.tolist(), 0]):
    if flag and start is None:
      start = i
    elif not flag and start is not None:
      spans.append(decode(tokens[start:i].tolist()))
      start = None
  assert spans == ["Red.<|im_end|>\n", "Blue.<|im_end|>\n"]
  _, everything = sft.encode_conversation(tokenizer, template, CONVERSATIONS[1], False, "test")
  assert everything.all()


def test_packed_rows_hold_whole_conversations_with_their_masks(tokenizer_dir, data_file):
  config = pyconfig.from_dict(_keys(tokenizer_dir, data_file, max_target_length=160))
  corpus = build_corpus(config)
  by_inputs = {tuple(e["inputs"].tolist()): e["targets_mask"] for e in corpus.documents.documents}
  batch = next(input_pipeline.make_iterator(config, corpus, "train", 4))
  packed_rows = 0
  for row in range(4):
    segments = batch["inputs_segmentation"][row]
    packed_rows += int(segments.max() > 1)
    for segment in range(1, int(segments.max()) + 1):
      where = segments == segment
      mask = by_inputs[tuple(batch["inputs"][row][where].tolist())]  # a whole conversation, unsplit
      np.testing.assert_array_equal(batch["targets_segmentation"][row][where], mask * segment)
      np.testing.assert_array_equal(batch["inputs_position"][row][where], np.arange(where.sum()))
    assert (batch["targets_segmentation"][row][segments == 0] == 0).all()
  assert packed_rows > 0  # several short conversations share a row


def test_unpacked_rows_hold_one_conversation_each(tokenizer_dir, data_file):
  config = pyconfig.from_dict(_keys(tokenizer_dir, data_file, packing=False))
  corpus = build_corpus(config)
  batch = next(input_pipeline.make_iterator(config, corpus, "train", 4))
  assert batch["inputs_segmentation"].max() == 1
  for row in range(4):
    n = int(batch["inputs_segmentation"][row].sum())
    example = next(e for e in corpus.documents.documents if np.array_equal(e["inputs"], batch["inputs"][row][:n]))
    np.testing.assert_array_equal(batch["targets_segmentation"][row][:n], example["targets_mask"])


def test_an_epoch_of_conversations_is_each_conversation_once(tokenizer_dir, tmp_path):
  """The shuffle buffer holds at most one epoch of conversations: 12 conversations, 3 batches of 4, each once
  (a buffer of 8192 would hold about 680 copies of each and repeat some within the first batches)."""
  path = tmp_path / "distinct.jsonl"
  chats = [[{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}."}] for i in range(12)]
  path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
  config = pyconfig.from_dict(_keys(tokenizer_dir, path, packing=False, eval_fraction=0.0))
  corpus = build_corpus(config)
  assert config.data_shuffle_buffer_size == 8192 and input_pipeline.shuffle_window(config, True, 12) == 12
  iterator = input_pipeline.make_iterator(config, corpus, "train", 4)
  seen = []
  for batch in (next(iterator) for _ in range(3)):
    for row in range(4):
      n = int(batch["inputs_segmentation"][row].sum())
      seen.append(tuple(batch["inputs"][row][:n].tolist()))
  assert len(set(seen)) == 12 == len(seen)


@pytest.mark.parametrize(
  ("extra", "message"),
  [
    ({"dataset_type": "text"}, "dataset_type: use_sft reads conversations from jsonl, parquet or arrow"),
    ({"tokenizer_type": "byte"}, "tokenizer_type: use_sft needs a huggingface tokenizer folder"),
  ],
)
def test_sft_keys_are_checked(tokenizer_dir, data_file, extra, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load_dict(_keys(tokenizer_dir, data_file, **extra))


def test_bad_conversations_are_named(tokenizer_dir, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"messages": [{"role": "robot", "content": "beep"}]}) + "\n")
  with pytest.raises(config_lib.UserError, match=r"bad.jsonl:1: message 0 must be \{role: one of system, user"):
    build_corpus(pyconfig.from_dict(_keys(tokenizer_dir, bad)))
  bad.write_text(json.dumps({"text": "no messages"}) + "\n")
  with pytest.raises(config_lib.UserError, match=r"train_data_columns: .*bad.jsonl:1 has no field 'messages'"):
    build_corpus(pyconfig.from_dict(_keys(tokenizer_dir, bad)))


def _sft_run(tmp_path, tokenizer_dir, data_file, name, *extra):
  keys = _keys(tokenizer_dir, data_file)
  keys.pop("model_name"), keys.pop("dtype"), keys.pop("max_target_length"), keys.pop("per_device_batch_size")
  args = [f"{k}={v}" for k, v in keys.items()]
  return run_train(tmp_path, *TINY, f"run_name={name}", "steps=3", "max_target_length=64", *args, *extra)


@pytest.mark.slow
def test_sft_trains_with_ce_online_kd_and_offline_kd(tmp_path, tokenizer_dir, data_file):
  from MaxText import save_top_k_teacher_logits as save_job

  _sft_run(tmp_path, tokenizer_dir, data_file, "ce", "checkpoint_period=3")
  ce = read_metrics(tmp_path / "ce")
  teacher = tmp_path / "ce" / "checkpoints" / "3"
  _sft_run(tmp_path, tokenizer_dir, data_file, "kd", "use_kd=true", f"kd_teacher_parameters_path={teacher}")
  kd = read_metrics(tmp_path / "kd")
  # the same data stream: the loss counts the same (assistant-only) tokens in every step
  assert [r["tokens"] for r in ce if "tokens" in r] == [r["tokens"] for r in kd if "tokens" in r]
  assert np.isfinite(kd[-1]["kd/kl_div_T1"])
  keys = _keys(tokenizer_dir, data_file, steps=3, use_kd=True, kd_teacher_parameters_path=str(teacher))
  keys.update(kd_offline_output_dir=str(tmp_path / "cache"), kd_offline_top_k=8)
  save_job.save(pyconfig.from_dict(keys))
  _sft_run(tmp_path, tokenizer_dir, data_file, "offline", "use_kd=true", f"kd_offline_data_dir={tmp_path / 'cache'}")
  offline = read_metrics(tmp_path / "offline")
  assert [r["tokens"] for r in offline if "tokens" in r] == [r["tokens"] for r in ce if "tokens" in r]
