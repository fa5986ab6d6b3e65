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


def _rows(out, prefix=""):
  files = sorted(f for f in os.listdir(out) if f.startswith(prefix) and f.endswith(".parquet"))
  return [r for f in files for r in pq.read_table(out / f).to_pylist()]


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


def test_self_instruct_filters_and_split():
  from MaxText.inference import self_instruct as si
  from tests.chat_files import CHAT_TEMPLATE

  header = si.user_header(CHAT_TEMPLATE, {})
  assert header == "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n"
  assert si.jaccard(si.shingles("a b c d"), si.shingles("A, b c. d!")) == 1.0
  assert si.jaccard(si.shingles("a b c d"), si.shingles("a b c e")) == 1 / 3  # {abc} shared of {abc, bcd, bce}
  seen = si.NearDuplicates(threshold=0.5)
  verdicts = [
    si.instruction_verdict(text, stopped, 3, seen)
    for text, stopped in [
      ("Tell me about the sea.", True),
      ("Tell me about the sea please.", True),  # 3 of 4 grams shared: 0.75 >= 0.5
      ("Tell me about rivers and lakes.", True),  # 2 of 6: kept
      ("Name two birds", False),  # no end of turn
      ("Hello there", True),  # two words
    ]
  ]
  assert verdicts == ["", "near_duplicate", "", "instruction_not_stopped", "instruction_too_short"]
  texts = [f"instruction number {i}" for i in range(4000)]
  share = sum(si.is_heldout(t, 0.125) for t in texts) / len(texts)
  assert abs(share - 0.125) < 0.02  # binomial sd 0.005
  assert si.is_heldout("Tell me, about the SEA", 0.125) == si.is_heldout("tell me about the sea", 0.125)


def _self_instruct_argv(root, tokenizer, out, *extra):
  keys = ["model_name=tiny", "dtype=float32", f"load_parameters_path={root / 'teacher'}"]
  keys += ["tokenizer_type=huggingface", f"tokenizer_path={tokenizer}", f"generation_output_dir={out}"]
  keys += ["generation_self_instruct=true", "generation_num_instructions=12", "generation_prompts_per_shard=6"]
  keys += ["generation_instruction_max_tokens=12", "generation_instruction_min_words=1", "decode_max_new_tokens=12"]
  keys += ["max_prefill_predict_length=64", "per_device_batch_size=4", "decode_sampling_strategy=weighted"]
  return ["base.yml", *keys, *extra]


def _stops(offset):
  """A random model rarely writes <|im_end|>: an eighth of the vocabulary ends a turn here."""
  return "decode_stop_tokens=" + ",".join(str(t) for t in range(offset, 300, 8))


@pytest.mark.slow
def test_self_instruct_prompts_come_from_the_header_and_resume_to_the_same_rows(tmp_path, setup, monkeypatch):
  from MaxText.data import chat
  from MaxText.data.tokenizer import build_tokenizer
  from MaxText.inference import runner, self_instruct

  root, tokenizer, _ = setup
  calls = []
  original = runner.BatchGenerator.__call__
  monkeypatch.setattr(runner.BatchGenerator, "__call__", lambda self, p, k: calls.append(p) or original(self, p, k))
  out = tmp_path / "out"
  argv = _self_instruct_argv(root, tokenizer, out, "generation_heldout_fraction=0.3", _stops(0))
  manifest = job.run(job.load_config(argv))
  tok, template = build_tokenizer("huggingface", str(tokenizer)), chat.read_chat_template(str(tokenizer))
  header = tok.encode(self_instruct.user_header(*template))
  instruction_calls = [c for c in calls if c[0] == header]
  assert sum(map(len, instruction_calls)) == 12 and all(p == header for c in instruction_calls for p in c)
  train, heldout = _rows(out, "part-"), _rows(out, "heldout-")
  assert manifest["records"] == len(train) and manifest["heldout_records"] == len(heldout) and train and heldout
  answered = [p for c in calls if c[0] != header for p in c]
  dropped = manifest["dropped"]
  assert len(answered) == 12 - dropped["instruction_not_stopped"] - dropped["instruction_too_short"]
  assert len(answered) - dropped["near_duplicate"] - dropped["answer_not_stopped"] == len(train) + len(heldout)
  for row in train + heldout:
    user, reply = row["messages"]
    assert user["role"] == "user" and reply["role"] == "assistant" and row["stopped"]
    rendered = chat.render(*template, [user], add_generation_prompt=True)
    assert tok.encode(rendered) in answered  # the answer's prompt is the kept instruction, chat-rendered
    assert self_instruct.is_heldout(user["content"], 0.3) == (row in heldout)

  _interrupt_after_first_shard(out)
  assert job.run(job.load_config(argv)) == manifest and _rows(out, "part-") + _rows(out, "heldout-") == train + heldout

  # nearly greedy instructions are all alike: the first is kept (its answer runs too long), the rest are its
  # near-duplicates, also after a resume, which remembers the kept instruction though no row holds it
  argv = _self_instruct_argv(root, tokenizer, tmp_path / "alike", "generation_instruction_temperature=0.01", _stops(1))
  alike = job.run(job.load_config(argv))
  assert alike["dropped"]["near_duplicate"] == 11 and alike["dropped"]["answer_not_stopped"] == 1
  _interrupt_after_first_shard(tmp_path / "alike")
  assert job.run(job.load_config(argv)) == alike


def test_a_refused_self_instruct_job_leaves_no_output_folder(tmp_path, setup):
  from MaxText.config.errors import BadInputError

  root, tokenizer, _ = setup
  silent = tmp_path / "tok"  # a chat template that never writes the user's words: no header to sample from
  shutil.copytree(tokenizer, silent)
  config = json.loads((silent / "tokenizer_config.json").read_text())
  config["chat_template"] = "{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_end|>{% endfor %}"
  (silent / "tokenizer_config.json").write_text(json.dumps(config))
  out = tmp_path / "new" / "conversations"
  argv = [a.replace(str(tokenizer), str(silent)) for a in _self_instruct_argv(root, tokenizer, out)]
  with pytest.raises(BadInputError, match="^chat template: it does not write a user turn's content"):
    job.run(job.load_config(argv))
  assert not out.exists() and not out.parent.exists()


def _interrupt_after_first_shard(out):
  """What an interruption after the first shard leaves: the later shards and the manifest are gone."""
  progress = json.loads((out / "progress-0.json").read_text())
  for shard in progress["shards"][1:]:
    for name in (shard["file"], shard.get("heldout_file")):
      if name:
        os.remove(out / name)
  progress["shards"] = progress["shards"][:1]
  (out / "progress-0.json").write_text(json.dumps(progress))
  os.remove(out / "manifest.json")


def test_rationale_tasks_split_at_the_last_marker_with_task_prefixes():
  from MaxText.inference import rationales

  prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
  asked = rationales.ask_for_rationale(prompt, "Q: {prompt} Think, then write 'Answer:'.")
  assert asked == [prompt[0], {"role": "user", "content": "Q: What is 2 + 3? Think, then write 'Answer:'."}]
  assert rationales.split_response("2 plus 3. Answer: 4? No. Answer: 5", "Answer:") == ("2 plus 3. Answer: 4? No.", "5")
  assert rationales.split_response("It is five.", "Answer:") is None
  assert rationales.split_response("Answer:  ", "Answer:") is None
  said = "8 + 8 = 16.\nThe answer is 16.\nThe answer is: 16.\n\nSo 16 - 8 = 8."  # restated, then more talk
  assert rationales.split_response(said, "The answer is") == ("8 + 8 = 16.", "16.")
  tasks = rationales.task_columns(prompt, "Two plus three is five. Answer: 5", "Answer:")
  assert tasks["answer_messages"] == [
    prompt[0],
    {"role": "user", "content": "[answer] What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
  ]
  assert tasks["rationale_messages"][1] == {"role": "user", "content": "[rationale] What is 2 + 3?"}
  assert tasks["rationale_messages"][2]["content"] == "Two plus three is five.\nAnswer: 5"


def test_rationale_mode_writes_both_tasks_that_a_mixture_reads(tmp_path, setup, monkeypatch):
  from MaxText import pyconfig
  from MaxText.data import input_pipeline
  from MaxText.data.tokenizer import build_tokenizer

  root, tokenizer, prompts = setup
  asked = []
  real_answer = job.answer

  def answer_with_reasoning(config, generator, tok, template, chunk, key):
    """The tiny random teacher cannot reason: its responses are replaced, every other one without an answer."""
    asked.extend(p[-1]["content"] for _, p in chunk)
    records, skipped = real_answer(config, generator, tok, template, chunk, key)
    for n, record in enumerate(records):
      reply = "Because. Answer: blue" if n % 2 == 0 else "No idea."
      record["messages"][-1]["content"] = reply
    return records, skipped

  monkeypatch.setattr(job, "answer", answer_with_reasoning)
  out = tmp_path / "out"
  template = 'generation_rationale_template="Explain, then answer after Answer: {prompt}"'  # YAML-quoted: it holds ": "
  manifest = job.run(job.load_config(_argv(root, tokenizer, prompts, out, template, "max_prefill_predict_length=96")))
  assert asked[0] == "Explain, then answer after Answer: Name a colour."
  answered = 2 * (len(PROMPTS) - manifest["skipped_long_prompts"])  # two samples per prompt that fits
  assert manifest["records"] > 0 and manifest["records"] + manifest["dropped"]["no_answer"] == answered
  rows = _rows(out, "part-")
  questions = {p[-1]["content"] if p[-1]["role"] == "user" else p[-2]["content"] for p in PROMPTS}
  assert all(r["messages"][-2]["content"] in questions for r in rows)  # the original question, not the template
  assert all(r["answer_messages"][-1]["content"] == "blue" for r in rows)
  columns = ("answer_messages", "rationale_messages")
  mixture = [{"path": f"{out}/part-*.parquet", "column": c, "name": c} for c in columns]
  config = pyconfig.from_dict(
    {
      "model_name": "tiny",
      "use_sft": True,
      "dataset_type": "parquet",
      "tokenizer_type": "huggingface",
      "tokenizer_path": str(tokenizer),
      "dataset_mixture": mixture,
      "max_target_length": 64,
      "eval_fraction": 0.0,
    }
  )
  tok = build_tokenizer("huggingface", str(tokenizer))
  corpus = input_pipeline.build_corpus(config, tok)
  assert {name: len(c.documents) for name, c in corpus.sources.items()} == {c: manifest["records"] for c in columns}
  batch = next(input_pipeline.make_iterator(config, corpus, "train", 4))
  learned = tok.decode([int(t) for t in batch["targets"][batch["targets_segmentation"] > 0]])
  assert "blue" in learned and "Because." in learned


def test_rationale_template_refusals(setup, tmp_path):
  root, tokenizer, prompts = setup
  for extra, message in (
    ("generation_rationale_template=no placeholder", "must hold {prompt}"),
    ("generation_self_instruct=true", "the answer job's mode"),
  ):
    keys = ["generation_rationale_template=Q {prompt}", extra] if "self" in extra else [extra]
    with pytest.raises(config_lib.ConfigError, match=message):
      job.load_config(_argv(root, tokenizer, prompts, tmp_path / "o", *keys, "generation_num_instructions=4"))


def test_answers_with_a_speculative_draft_are_the_teachers_own(tmp_path, setup, capsys):
  """Greedy answers written with the teacher as its own draft equal those written without one."""
  root, tokenizer, prompts = setup
  draft = tmp_path / "draft"  # a converted checkpoint's folder: the parameters and their model keys
  shutil.copytree(root / "teacher", draft)
  from MaxText import pyconfig
  from MaxText.config.views import MODEL_KEYS

  tiny = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32"})
  (draft / "model_config.json").write_text(json.dumps({k: getattr(tiny, k) for k in MODEL_KEYS}))
  greedy = ["decode_sampling_strategy=greedy", "decode_sampling_nucleus_p=1.0"]
  plain = job.run(job.load_config(_argv(root, tokenizer, prompts, tmp_path / "plain", *greedy)))
  speculative = [*greedy, f"decode_draft_parameters_path={draft}", "decode_draft_tokens=2"]
  drafted = job.run(job.load_config(_argv(root, tokenizer, prompts, tmp_path / "drafted", *speculative)))
  assert drafted["records"] == plain["records"] == 8
  assert _rows(tmp_path / "drafted") == _rows(tmp_path / "plain")
  assert "speculative decoding: acceptance 1.000" in capsys.readouterr().out
