"""Generation: greedy parity with transformers (Llama, Qwen2, Qwen3), KV cache = no cache, sampling
frequencies against the truncated distribution, chat templates, and the decode job end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import decode
from MaxText.data import chat
from MaxText.inference.generate import generate, generate_without_cache
from MaxText.inference.sampling import Sampling, sample, truncated_logits
from MaxText.model import kv_cache
from tests.chat_files import CHAT_TEMPLATE, chat_tokenizer_folder
from tests.conftest import TINY, run_train

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

COMMON = dict(
  vocab_size=320,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=256,
  initializer_range=0.3,  # peaked logits: greedy choices are far from ties
)


def _hf_and_ours(arch: str):
  from tests.test_hf_parity import _ours

  torch.manual_seed(5)
  if arch == "llama":
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, head_dim=8, rms_norm_eps=1e-5))
    return hf.eval(), _ours(hf, {"normalization_layer_epsilon": 1e-5})
  if arch == "qwen2":
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**COMMON, rms_norm_eps=1e-6)).eval()
    with torch.no_grad():  # zero biases would test nothing
      for name, param in hf.named_parameters():
        if name.endswith("bias"):
          param.normal_(0.0, 0.5)
    return hf, _ours(hf, {"use_qkv_bias": True, "normalization_layer_epsilon": 1e-6})
  config = transformers.Qwen3Config(**COMMON, head_dim=8, rms_norm_eps=1e-6, tie_word_embeddings=True)
  hf = transformers.Qwen3ForCausalLM(config).eval()
  keys = {"use_qk_norm": True, "logits_via_embedding": True, "normalization_layer_epsilon": 1e-6}
  return hf, _ours(hf, keys)


PROMPTS = [[5, 77, 140, 9, 31, 200, 18], [260, 3], [11, 12, 13, 14]]


def _batch(prompts):
  longest = max(len(p) for p in prompts)
  tokens = np.zeros((len(prompts), longest), np.int32)
  for row, ids in enumerate(prompts):
    tokens[row, : len(ids)] = ids
  return jnp.asarray(tokens), jnp.asarray([len(p) for p in prompts], jnp.int32)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_greedy_generation_matches_transformers_token_for_token(arch):
  hf, ours = _hf_and_ours(arch)
  tokens, lengths = _batch(PROMPTS)  # prompts of different lengths in one batch
  got = jax.jit(lambda t, n: generate(ours, t, n, jax.random.key(0), Sampling(), 24))(tokens, lengths)
  for row, prompt in enumerate(PROMPTS):  # transformers one prompt at a time: no padding involved
    x = torch.tensor([prompt])
    with torch.no_grad():
      want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False, eos_token_id=None)
    np.testing.assert_array_equal(np.asarray(got.tokens_BxN[row]), want[0, len(prompt) :].numpy(), err_msg=arch)
  assert got.lengths_B.tolist() == [24, 24, 24]


@pytest.mark.parametrize("sampling", [Sampling(), Sampling("weighted", 0.7), Sampling("topk", 1.3, 5)], ids=str)
def test_kv_cached_generation_equals_rerunning_the_whole_sequence(sampling):
  _, ours = _hf_and_ours("qwen3")
  tokens, lengths = _batch(PROMPTS)
  key = jax.random.key(3)
  cached = jax.jit(lambda t, n: generate(ours, t, n, key, sampling, 16, stop_ids=(7, 8)))(tokens, lengths)
  plain = jax.jit(lambda t, n: generate_without_cache(ours, t, n, key, sampling, 16, stop_ids=(7, 8)))(tokens, lengths)
  np.testing.assert_array_equal(cached.tokens_BxN, plain.tokens_BxN)
  np.testing.assert_array_equal(cached.lengths_B, plain.lengths_B)


def test_prefill_and_decode_steps_give_the_full_forward_logits():
  _, ours = _hf_and_ours("llama")
  sequence = jnp.asarray([PROMPTS[0] + [101, 102, 103]], jnp.int32)
  full = np.asarray(ours.logits(sequence))[0]
  cache = kv_cache.init_cache(ours.config, 1, 12)
  hidden, cache = kv_cache.extend(ours, sequence[:, :7], jnp.arange(7)[None], cache)
  steps = [kv_cache.logits_of(ours, hidden[:, -1])]
  for position in range(7, 10):
    hidden, cache = kv_cache.extend(ours, sequence[:, position : position + 1], jnp.asarray([[position]]), cache)
    steps.append(kv_cache.logits_of(ours, hidden[:, 0]))
  np.testing.assert_allclose(np.concatenate(steps), full[6:10], rtol=1e-5, atol=1e-5)


def test_stop_tokens_end_a_row_and_pad_the_rest():
  _, ours = _hf_and_ours("llama")
  tokens, lengths = _batch(PROMPTS)
  free = generate(ours, tokens, lengths, jax.random.key(0), Sampling(), 12)
  stop = int(free.tokens_BxN[0, 4])  # the fifth token of row 0 becomes a stop token
  got = generate(ours, tokens, lengths, jax.random.key(0), Sampling(), 12, stop_ids=(stop,), pad_id=-1)
  for row in range(3):
    free_row, row_out = np.asarray(free.tokens_BxN[row]), np.asarray(got.tokens_BxN[row])
    hits = np.flatnonzero(free_row == stop)
    n = hits[0] + 1 if hits.size else 12
    assert got.lengths_B[row] == n
    np.testing.assert_array_equal(row_out[:n], free_row[:n])
    assert (row_out[n:] == -1).all()


LOGITS = jnp.asarray([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, 3.0, 0.2]])


def _frequencies(sampling: Sampling, draws: int = 40000) -> np.ndarray:
  keys = jax.random.split(jax.random.key(11), draws)
  tokens = jax.jit(jax.vmap(lambda k: sample(LOGITS, k, sampling)[0]))(keys)
  return np.bincount(np.asarray(tokens), minlength=LOGITS.shape[1]) / draws


def _truncated_reference(temperature, keep):
  x = np.asarray(LOGITS[0], np.float64) / temperature
  p = np.where(keep, np.exp(x - x.max()), 0.0)
  return p / p.sum()


@pytest.mark.parametrize(
  ("sampling", "kept"),
  [
    (Sampling("weighted", 0.8), [0, 1, 2, 3, 4, 5, 6, 7]),
    (Sampling("topk", 1.5, 3), [6, 0, 1]),
    # T 1: p sorted = .516 .190 .115 .070 .042 .031 .026 .009 (ids 6 0 1 2 3 7 4 5): the mass before
    # id 2 is .821 < .85 (kept), before id 3 .891 (not)
    (Sampling("nucleus", 1.0, 0, 0.85), [6, 0, 1, 2]),
  ],
  ids=lambda x: x.strategy if isinstance(x, Sampling) else "",
)
def test_sampling_frequencies_follow_the_truncated_distribution(sampling, kept):
  keep = np.isin(np.arange(8), kept)
  want = _truncated_reference(sampling.temperature, keep)
  got = _frequencies(sampling)
  assert (got[~keep] == 0).all()  # nothing outside the kept set, ever
  # 40,000 draws: the standard error of a frequency is <= 0.0025; 0.01 is four of them
  np.testing.assert_allclose(got, want, atol=0.01)
  kept_logits = np.isfinite(np.asarray(truncated_logits(LOGITS, sampling)[0]))
  np.testing.assert_array_equal(kept_logits, keep)


# --- chat templates ---

CONVERSATION = [
  {"role": "user", "content": "Name a colour."},
  {"role": "assistant", "content": "Blue."},
  {"role": "user", "content": "Another?"},
]


def test_chat_template_renders_as_transformers_does(tmp_path):
  folder = chat_tokenizer_folder(tmp_path / "tok")
  template, specials = chat.read_chat_template(str(folder))
  reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
  for add in (True, False):
    want = reference.apply_chat_template(
      CONVERSATION, chat_template=CHAT_TEMPLATE, add_generation_prompt=add, tokenize=False
    )
    assert chat.render(template, specials, CONVERSATION, add) == want


# --- the job ---


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("run")
  run_train(out, *TINY, "run_name=lm", "steps=10", "checkpoint_period=10", "learning_rate=5e-3")
  return out / "lm" / "checkpoints" / "10"


def test_decode_job_continues_a_batch_of_prompts_as_the_library_does(tmp_path, trained_run):
  prompts = tmp_path / "prompts.jsonl"
  texts = ["to be or not", "a", "the question whether tis nobler"]
  prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
  out = tmp_path / "out.jsonl"
  argv = ["decode", "base.yml", f"load_parameters_path={trained_run}", f"decode_input_path={prompts}"]
  argv += [f"decode_output_path={out}", "decode_max_new_tokens=8", "per_device_batch_size=2", "decode_stop_tokens=0"]
  assert decode.main(argv) == 0
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["prompt"] for r in records] == texts
  # the library on the same weights, one prompt at a time (bos + bytes; the byte tokenizer offsets ids by 3)
  config = decode.load_config([a for a in argv[1:] if not a.startswith("decode_output_path")])
  from MaxText.model import decoder
  from MaxText.model.params_io import load_params

  graphdef, abstract, _ = decoder.split_params(decoder.abstract_model(config))
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  model = decoder.bind(graphdef, load_params(str(trained_run), abstract, shardings))
  for text, record in zip(texts, records, strict=True):
    ids = [1] + [b + 3 for b in text.encode()]
    want = generate(model, jnp.asarray([ids]), jnp.asarray([len(ids)]), jax.random.key(0), Sampling(), 8, (0,))
    assert record["completion_ids"] == np.asarray(want.tokens_BxN[0, : int(want.lengths_B[0])]).tolist()


def test_decode_job_with_a_draft_writes_the_models_own_tokens_and_reports_acceptance(tmp_path, trained_run, capsys):
  """The model as its own draft: every proposal is kept (acceptance 1, k + 1 tokens a forward), and the
  completions are those of the job without a draft."""
  argv = ["decode", "base.yml", f"load_parameters_path={trained_run}", "decode_max_new_tokens=12"]
  argv += ["prompt=to be or not", "decode_stop_tokens=0"]
  assert decode.main([*argv, f"decode_output_path={tmp_path / 'plain.jsonl'}"]) == 0
  draft = [f"decode_draft_parameters_path={trained_run}", "decode_draft_tokens=3", "decode_compare_plain=true"]
  assert decode.main([*argv, *draft, f"decode_output_path={tmp_path / 'draft.jsonl'}"]) == 0
  report = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("speculative decoding"))
  plain, drafted = (json.loads((tmp_path / f"{n}.jsonl").read_text()) for n in ("plain", "draft"))
  assert drafted["completion_ids"] == plain["completion_ids"]
  n = len(plain["completion_ids"])
  assert f"acceptance 1.000 ({3 * -(-n // 4)} of {3 * -(-n // 4)} draft tokens)" in report, report
  assert f"{n / -(-n // 4):.2f} tokens per target forward" in report and "tokens/s; plain decode" in report
  # The same model with its vocabulary padded from 320 to 384 ids, the new output rows far above the rest:
  # a draft of the same tokenizer is accepted, its extra ids are never proposed, and it stays perfect.
  padded = _padded_copy(trained_run, tmp_path / "padded", 384)
  draft = [f"decode_draft_parameters_path={padded}", "decode_draft_tokens=3"]
  assert decode.main([*argv, *draft, f"decode_output_path={tmp_path / 'padded.jsonl'}"]) == 0
  report = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("speculative decoding"))
  assert json.loads((tmp_path / "padded.jsonl").read_text())["completion_ids"] == plain["completion_ids"]
  assert f"acceptance 1.000 ({3 * -(-n // 4)} of {3 * -(-n // 4)} draft tokens)" in report, report


def _padded_copy(step_dir, folder, vocab: int):
  """A parameters-only copy of a checkpoint with `vocab` ids: every [320, ...] or [..., 320] table padded
  with rows of 50.0, and its model_config.json (the run's keys, the byte tokenizer) saying so."""
  from MaxText.model.params_io import read_params_to_host, save_params

  def pad(x):
    widths = [(0, vocab - n if n == 320 else 0) for n in x.shape]
    return jnp.pad(x, widths, constant_values=50.0) if any(w for _, w in widths) else x

  save_params(str(folder), jax.tree.map(pad, read_params_to_host(str(step_dir))))
  with open(step_dir.parent.parent / "config.json", encoding="utf-8") as f:
    keys = json.load(f)
  (folder / "model_config.json").write_text(json.dumps({**keys, "vocab_size": vocab}))
  return folder


@pytest.mark.parametrize(
  ("extra", "message"),
  [
    ([], "load_parameters_path: the model to generate with must be given"),
    (["LOAD", "max_prefill_predict_length=4"], "max_prefill_predict_length: prompt 0 has 9 tokens"),
    (["LOAD", "decode_input_path=BAD"], "line 2 is not JSON"),
    (["LOAD", "decode_sampling_strategy=topk"], "decode_sampling_top_k: topk needs 1..vocab_size"),
    (["LOAD", "decode_sampling_temperature=0.5"], "decode_sampling_temperature: has no effect with greedy"),
    (["LOAD", "decode_output_path=BAD"], "bad.jsonl' exists; name a new file (nothing was written)"),
    (
      ["LOAD", "decode_draft_parameters_path=/nonexistent"],
      "decode_draft_parameters_path: '/nonexistent' does not exist",
    ),
    (
      ["LOAD", "decode_draft_parameters_path=DRAFT", "decode_draft_tokens=0"],
      "decode_draft_tokens: expected a positive",
    ),
    (["LOAD", "decode_draft_parameters_path=OTHER_TOKENIZER"], "the draft's tokenizer (huggingface:sha256:"),
    (["LOAD", "decode_draft_parameters_path=OTHER_VOCAB"], "the draft's vocab_size 384 ("),
  ],
)
def test_decode_job_refuses_bad_input_in_one_line(tmp_path, trained_run, capsys, extra, message):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "ok"}\nnot json\n')
  with open(trained_run.parent.parent / "config.json", encoding="utf-8") as f:
    keys = json.load(f)
  drafts = {}
  unnamed = {k: v for k, v in keys.items() if k not in ("tokenizer_type", "tokenizer_path")}
  for name, saved in (("OTHER_TOKENIZER", keys), ("OTHER_VOCAB", {**unnamed, "vocab_size": 384})):
    folder = tmp_path / name.lower()  # a converted draft's folder: its model keys and its own tokenizer file
    folder.mkdir()
    (folder / "model_config.json").write_text(json.dumps(saved))
    if name == "OTHER_TOKENIZER":
      (folder / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    drafts[name] = str(folder)
  replacements = {"LOAD": f"load_parameters_path={trained_run}", "BAD": str(bad), "DRAFT": str(trained_run), **drafts}
  for old, new in replacements.items():
    extra = [e.replace(old, new) for e in extra]
  assert decode.main(["decode", "base.yml", "prompt=to be or", *extra]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1
