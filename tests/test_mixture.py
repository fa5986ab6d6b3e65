"""Weighted data-set mixtures (dataset_mixture, upstream's 'files,weight;...'): parsing and refusals, the
mixed stream's weights, determinism and resume, SFT sources, per-source eval in a training run."""

import json

import numpy as np
import pytest

from MaxText import pyconfig
from MaxText.config.mixture import SourceSpec
from MaxText.data import input_pipeline
from MaxText.data.tokenizer import ByteTokenizer
from MaxText.pyconfig import ConfigError
from tests.conftest import TINY, read_metrics, run_train


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
  """Two text data sets told apart by their bytes: every window of `ayes` is 'a's, of `bees` 'b's."""
  root = tmp_path_factory.mktemp("mixture")
  for name, letter in (("ayes", "a"), ("bees", "b")):
    (root / name).mkdir()
    for i in range(8):
      (root / name / f"{i}.txt").write_text(letter * 200)
  return root


def _config(root, **overrides):
  mixture = [{"path": str(root / "ayes"), "weight": 3}, {"path": str(root / "bees"), "weight": 1}]
  keys = {"model_name": "tiny", "max_target_length": 16, "packing": False, "dataset_mixture": mixture}
  return pyconfig.from_dict({**keys, **overrides})


def _iterator(config, split="train"):
  return input_pipeline.make_iterator(config, input_pipeline.build_corpus(config, ByteTokenizer()), split, 4)


def test_upstream_weighted_dataset_path_and_the_list_give_the_same_sources(two_sources):
  listed = _config(two_sources)
  upstream = pyconfig.from_dict({"model_name": "tiny", "dataset_path": f"{two_sources}/ayes,3;{two_sources}/bees,1"})
  expected = (SourceSpec("ayes", str(two_sources / "ayes"), 3.0), SourceSpec("bees", str(two_sources / "bees"), 1.0))
  assert listed.dataset_mixture == upstream.dataset_mixture == expected
  assert upstream.dataset_path == ""


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"dataset_path": "a,0;b,1"}, "dataset_path entry 0.weight: expected a number > 0, got 0.0"),
    ({"dataset_path": "a;b,1"}, "dataset_path: mixture entry 0 'a' is not 'files,weight'"),
    ({"dataset_mixture": [{"path": "a", "colour": 1}]}, "dataset_mixture\\[0\\]: unknown field 'colour'"),
    ({"dataset_mixture": [{"path": "x/a"}, {"path": "y/a"}]}, "the name 'a' is used twice"),
    ({"dataset_mixture": [{"path": "a"}], "eval_dataset_path": "e"}, "eval_dataset_path: cannot be used with"),
    ({"dataset_mixture": [{"path": "a", "type": "csv"}], "use_sft": True, "dataset_type": "jsonl"}, "type: 'csv'"),
    (
      {
        "dataset_mixture": [{"path": "a", "type": "text"}],
        "use_sft": True,
        "dataset_type": "jsonl",
        "use_kd": True,
        "kd_teacher_parameters_path": "t",
        "kd_teacher_tokenizer_path": "t",
      },
      "text in a use_sft mixture is not built for cross-tokenizer KD",
    ),
    ({"dataset_mixture": [{"path": "a"}], "dataset_type": "synthetic"}, "synthetic data cannot be mixed"),
  ],
)
def test_mixture_refusals(overrides, message):
  with pytest.raises(ConfigError, match=message):
    pyconfig.from_dict({"model_name": "tiny", "tokenizer_type": "huggingface", "tokenizer_path": "t", **overrides})


A_ID, B_ID = ByteTokenizer().encode("ab")


def _letters(batch) -> list[str]:
  """Which source each row came from, by its tokens."""
  return ["a" if (row == A_ID).any() else "b" if (row == B_ID).any() else "?" for row in batch["inputs"]]


def test_the_stream_follows_the_weights_and_resumes_exactly(two_sources):
  config = _config(two_sources)
  it = _iterator(config)
  rows = [letter for _ in range(40) for letter in _letters(next(it))]
  assert set(rows) == {"a", "b"} and abs(rows.count("a") / len(rows) - 0.75) < 0.03, rows.count("a")
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  again = _iterator(config)
  first = [next(again) for _ in range(40)]
  assert [letter for b in first for letter in _letters(b)] == rows  # deterministic
  resumed = _iterator(config)
  resumed.set_state(json.loads(json.dumps(state)) if isinstance(state, dict) else state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_sft_sources_mix_conversations_with_their_own_columns_and_text(tmp_path):
  """Each conversation source is read with its column and trains on the assistant's tokens only; a text
  source of the same mixture trains on every token of its windows."""
  from tests.chat_files import chat_tokenizer_folder

  tokenizer = chat_tokenizer_folder(tmp_path / "tok")
  for name, column, answer in (("colours", "messages", "Blue."), ("greetings", "chat", "Hi there.")):
    with open(tmp_path / f"{name}.jsonl", "w", encoding="utf-8") as f:
      for _ in range(6):
        turns = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": answer}]
        f.write(json.dumps({column: turns}) + "\n")
  (tmp_path / "story").mkdir()
  (tmp_path / "story" / "a.txt").write_text("Once upon a time. " * 40)
  mixture = [
    {"path": str(tmp_path / "colours.jsonl")},
    {"path": str(tmp_path / "greetings.jsonl"), "column": "chat"},
    {"path": str(tmp_path / "story"), "type": "text"},
  ]
  config = pyconfig.from_dict(
    {
      "model_name": "tiny",
      "max_target_length": 48,
      "use_sft": True,
      "dataset_type": "jsonl",
      "tokenizer_type": "huggingface",
      "tokenizer_path": str(tokenizer),
      "dataset_mixture": mixture,
    }
  )
  from MaxText.data.tokenizer import build_tokenizer

  tok = build_tokenizer("huggingface", str(tokenizer))
  it = input_pipeline.make_iterator(config, input_pipeline.build_corpus(config, tok), "train", 4)
  answers, text_rows = set(), 0
  for _ in range(6):
    batch = next(it)
    rows = (batch["targets"], batch["inputs_segmentation"], batch["targets_segmentation"])
    for tokens, segments, trained in zip(*rows, strict=True):
      answers.add(tok.decode([int(t) for t in tokens[trained > 0]]))
      for segment in set(segments[segments > 0].tolist()):  # the examples packed into this row
        if "Once upon" in tok.decode([int(t) for t in tokens[segments == segment]]):
          text_rows += 1  # a text window: every position of it a target
          assert (trained[segments == segment] > 0).all(), trained
  joined = " ".join(answers)
  assert "Blue." in joined and "Hi there." in joined and "Say hi" not in joined
  assert text_rows > 0


@pytest.mark.slow
def test_a_mixture_run_reports_eval_per_source(two_sources, tmp_path):
  mixture = f"[{{path: {two_sources}/ayes, weight: 3}}, {{path: {two_sources}/bees, weight: 1}}]"
  run_train(tmp_path, *TINY, "run_name=mix", "steps=2", f"dataset_mixture={mixture}", "eval_interval=2", "eval_steps=1")
  record = {}
  for line in read_metrics(tmp_path / "mix"):
    if any(key.startswith("eval/") for key in line):
      record.update(line)
  for name in ("ayes", "bees"):
    assert np.isfinite(record[f"eval/{name}/loss"]), record
  low, high = sorted([record["eval/ayes/loss"], record["eval/bees/loss"]])
  assert low < record["eval/loss"] < high  # the token-weighted whole lies between its parts
