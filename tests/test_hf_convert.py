"""Hugging Face conversion both ways: bit-identical round trips, sharded input, export of a KD-trained
student reloaded by transformers, and the errors for what cannot be converted."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import TINY, read_metrics, run_train  # noqa: E402

from MaxText import convert_hf_checkpoint, pyconfig  # noqa: E402
from MaxText.data import tokenizer  # noqa: E402
from MaxText.model import hf_weights, params_io  # noqa: E402

TOL = 1e-4
SIZES = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
LLAMA3_ROPE = {
  "rope_type": "llama3",
  "rope_theta": 500000.0,
  "factor": 8.0,
  "low_freq_factor": 1.0,
  "high_freq_factor": 4.0,
  "original_max_position_embeddings": 16,
}


def _hf_model(arch: str):
  torch.manual_seed({"llama": 0, "qwen2": 1, "qwen3": 2}[arch])
  if arch == "llama":
    config = transformers.LlamaConfig(**SIZES, num_key_value_heads=2, head_dim=8, rope_parameters=LLAMA3_ROPE)
    model = transformers.LlamaForCausalLM(config)
  elif arch == "qwen2":
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SIZES, num_key_value_heads=2))
    with torch.no_grad():  # transformers starts biases at zero, which would test nothing
      for name, param in model.named_parameters():
        if name.endswith("bias"):
          param.normal_(0.0, 0.5)
  else:
    config = transformers.Qwen3Config(**SIZES, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
    model = transformers.Qwen3ForCausalLM(config)
  return model.eval()


def _convert(*args):
  convert_hf_checkpoint.main([str(a) for a in args])


def _load_ours(ckpt_dir, **overrides):
  """Our model from a converted checkpoint, with the model keys the converter saved beside it."""
  import jax

  from MaxText.model.decoder import abstract_model, bind, split_params

  with open(os.path.join(ckpt_dir, params_io.MODEL_CONFIG_FILE), encoding="utf-8") as f:
    keys = {k: v for k, v in json.load(f).items() if k in pyconfig.MODEL_KEYS}
  config = pyconfig.from_dict({**keys, "dtype": "float32", **overrides})
  graphdef, abstract, _ = split_params(abstract_model(config))
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  return bind(graphdef, params_io.load_params(str(ckpt_dir), abstract, shardings))


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()


def _assert_same_tensors(dir_a, dir_b):
  a, b = hf_weights.read_safetensors_dir(str(dir_a)), hf_weights.read_safetensors_dir(str(dir_b))
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype, name
    assert np.array_equal(a[name].view(np.uint8), b[name].view(np.uint8)), name  # bit for bit


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_hf_to_ours_to_hf_is_bit_identical_and_logits_match(tmp_path, arch):
  hf = _hf_model(arch)
  # Qwen2 is saved sharded (with an index) to cover sharded input.
  hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB" if arch == "qwen2" else "5GB")
  assert os.path.isfile(tmp_path / "hf" / "model.safetensors.index.json") == (arch == "qwen2")
  _convert("--hf_dir", tmp_path / "hf", "--output", tmp_path / "ckpt")
  _convert("--to_hf", "--checkpoint", tmp_path / "ckpt", "--output", tmp_path / "out", "--max_shard_size", "40KB")
  _assert_same_tensors(tmp_path / "hf", tmp_path / "out")
  assert os.path.isfile(tmp_path / "out" / "model.safetensors.index.json")  # 40KB forces shards

  tokens = np.random.default_rng(0).integers(0, 320, size=(2, 40))
  expected = _hf_logits(hf, tokens)
  assert np.max(np.abs(np.asarray(_load_ours(tmp_path / "ckpt").logits(tokens)) - expected)) < TOL
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  assert type(reloaded) is type(hf)
  assert np.max(np.abs(_hf_logits(reloaded, tokens) - expected)) < TOL


def test_bfloat16_round_trip_is_bit_identical(tmp_path):
  _hf_model("llama").to(torch.bfloat16).save_pretrained(tmp_path / "hf")
  _convert("--hf_dir", tmp_path / "hf", "--output", tmp_path / "ckpt", "--dtype", "bfloat16")
  _convert("--to_hf", "--checkpoint", tmp_path / "ckpt", "--output", tmp_path / "out", "--dtype", "bfloat16")
  _assert_same_tensors(tmp_path / "hf", tmp_path / "out")


def _greedy_ours(model, prompt, new_tokens):
  tokens = list(prompt)
  for _ in range(new_tokens):
    tokens.append(int(np.argmax(np.asarray(model.logits(np.asarray([tokens])))[0, -1])))
  return tokens[len(prompt) :]


def test_kd_trained_student_exports_and_transformers_reproduces_it(tmp_path):
  import jax

  from MaxText.model.decoder import abstract_model, bind, split_params

  # Self-distillation with feature KD: the checkpoint holds a kd_projection, as an item of its own beside
  # the decoder's parameters, so the export reads the decoder's item as it is.
  run = ["run_name=kd", "steps=3", "use_kd=true", "kd_alpha=0.5", "kd_temperature=2.0", "kd_beta=0.5"]
  run_train(tmp_path, *TINY, *run)
  step_dir = params_io.latest_step_dir(str(tmp_path / "kd"))
  assert "kd_projection" in params_io.read_params_to_host(os.path.join(step_dir, "kd_head"))
  assert "kd_projection" not in params_io.read_params_to_host(step_dir)
  _convert("--to_hf", "--checkpoint", tmp_path / "kd", "--output", tmp_path / "hf")

  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32"})
  exported = hf_weights.read_safetensors_dir(str(tmp_path / "hf"))
  assert sorted(exported) == sorted(name for name, _ in hf_weights.hf_tensor_specs(config))
  student_config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "use_kd": True, "kd_beta": 0.5})
  graphdef, abstract, _ = split_params(abstract_model(student_config))
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  ours = bind(graphdef, params_io.load_params(step_dir, abstract, shardings))

  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  text = "To be, or not — to bé"
  prompt = hf_tok.encode(text, add_special_tokens=False)
  assert prompt == tokenizer.ByteTokenizer().encode(text)  # the exported tokenizer is the run's
  assert hf_tok.decode(prompt) == text
  logits = _hf_logits(hf, np.asarray([prompt]))
  assert np.max(np.abs(np.asarray(ours.logits(np.asarray([prompt]))) - logits)) < TOL
  with torch.no_grad():
    generated = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12)
  assert generated[0, len(prompt) :].tolist() == _greedy_ours(ours, prompt, 12)
  with open(tmp_path / "hf" / "generation_config.json", encoding="utf-8") as f:
    assert json.load(f)["eos_token_id"] == tokenizer.ByteTokenizer().eos_id


def _saved_llama(tmp_path):
  _hf_model("llama").save_pretrained(tmp_path / "hf")
  return tmp_path / "hf"


def _edit_config(hf_dir, **fields):
  path = hf_dir / "config.json"
  hf = json.loads(path.read_text())
  hf.update(fields)
  path.write_text(json.dumps(hf))


@pytest.mark.parametrize(
  ("fields", "message"),
  [
    ({"architectures": ["MistralForCausalLM"]}, "architecture MistralForCausalLM is not supported"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    (
      {"intermediate_size": 48},
      r"tensor 'model.layers.0.mlp.gate_proj.weight': shape \(64, 32\) does not match the config's \(48, 32\)",
    ),
  ],
)
def test_unconvertible_configs_are_named(tmp_path, fields, message):
  hf_dir = _saved_llama(tmp_path)
  _edit_config(hf_dir, **fields)
  with pytest.raises(SystemExit, match=message):
    _convert("--hf_dir", hf_dir, "--output", tmp_path / "ckpt")


def test_missing_tensor_is_named(tmp_path):
  from safetensors.numpy import save_file

  hf_dir = _saved_llama(tmp_path)
  tensors = hf_weights.read_safetensors_dir(str(hf_dir))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(SystemExit, match="no tensor 'model.layers.1.mlp.up_proj.weight'"):
    _convert("--hf_dir", hf_dir, "--output", tmp_path / "ckpt")


def test_existing_output_is_kept_and_preset_mismatch_named(tmp_path):
  hf_dir = _saved_llama(tmp_path)
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "keep.txt").write_text("mine")
  with pytest.raises(SystemExit, match="already exists and is not empty; nothing was written"):
    _convert("--hf_dir", hf_dir, "--output", tmp_path / "taken")
  assert os.listdir(tmp_path / "taken") == ["keep.txt"]
  with pytest.raises(SystemExit, match="--model_name: vocab_size=128256 but .*config.json has 320"):
    _convert("--hf_dir", hf_dir, "--output", tmp_path / "ckpt", "--model_name", "llama3.2-1b")


def test_converted_teacher_is_checked_against_its_model_config(tmp_path):
  hf_dir = _saved_llama(tmp_path)
  _convert("--hf_dir", hf_dir, "--output", tmp_path / "teacher")
  student = {"model_name": "tiny", "use_kd": True, "kd_teacher_parameters_path": str(tmp_path / "teacher")}
  with pytest.raises(
    pyconfig.ConfigError, match="kd_teacher_overrides: teacher .* but the checkpoint at .* was trained with"
  ):
    pyconfig.from_dict({**student, "kd_teacher_overrides": "emb_dim=32,mlp_dim=128"})
  with open(tmp_path / "teacher" / params_io.MODEL_CONFIG_FILE, encoding="utf-8") as f:
    keys = {k: v for k, v in json.load(f).items() if k in pyconfig.MODEL_KEYS and k != "vocab_size"}
  overrides = ",".join(f"{k}={v}" for k, v in keys.items())
  config = pyconfig.from_dict({**student, "kd_teacher_overrides": overrides})  # the matching teacher is accepted
  assert pyconfig.teacher_config(config).rope_scaling_factor == 8.0


@pytest.mark.parametrize(
  ("kind", "tokenizer_type", "file"),
  [("bpe", "huggingface", "tokenizer.json"), ("sentencepiece", "sentencepiece", "tokenizer.model")],
)
def test_exported_tokenizer_files_encode_like_the_run(tmp_path, kind, tokenizer_type, file):
  from MaxText.model import hf_export
  from MaxText.train_tokenizer import main as train_tokenizer

  text = "To be, or not to be, that is the question."
  train_tokenizer(["--type", kind, "--vocab_size", "512", "--output", str(tmp_path / "tok")])
  path = str(tmp_path / "tok" / file)
  config = pyconfig.from_dict({"tokenizer_type": tokenizer_type, "tokenizer_path": path, "vocab_size": 512})
  (tmp_path / "hf").mkdir()
  hf_export.write_tokenizer_files(config, str(tmp_path / "hf"))
  ours = tokenizer.build_tokenizer(tokenizer_type, path)
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert theirs.encode(text, add_special_tokens=False) == ours.encode(text)
  assert (theirs.bos_token_id, theirs.eos_token_id) == (ours.bos_id, ours.eos_id) == (1, 2)
  if tokenizer_type == "huggingface":  # the exported folder itself is a valid tokenizer_path
    again = tokenizer.build_tokenizer("huggingface", str(tmp_path / "hf"))
    assert again.encode(text) == ours.encode(text) and (again.bos_id, again.eos_id) == (1, 2)


def _model_keys_of(ckpt_dir) -> list[str]:
  with open(os.path.join(ckpt_dir, params_io.MODEL_CONFIG_FILE), encoding="utf-8") as f:
    saved = json.load(f)
  return [f"{k}={saved[k]}" for k in pyconfig.MODEL_KEYS if k in saved]


def test_feature_kd_student_starts_from_a_plain_and_a_converted_checkpoint_and_exports_as_is(tmp_path):
  # A plain run's checkpoint and a converted Hugging Face model hold decoder parameters only; a feature-KD
  # student (kd_beta > 0 with a learned projection) loads either and starts a fresh head of its own.
  run_train(tmp_path, *TINY, "run_name=plain", "steps=4", "learning_rate=1e-2")  # far from a fresh init
  _hf_model("llama").save_pretrained(tmp_path / "hf")
  _convert("--hf_dir", tmp_path / "hf", "--output", tmp_path / "converted")
  feature_kd = ["use_kd=true", "kd_alpha=0.5", "kd_beta=0.5", "kd_feature_projection=true"]
  starts = {
    "from_plain": (params_io.latest_step_dir(str(tmp_path / "plain")), []),
    "from_hf": (str(tmp_path / "converted"), _model_keys_of(tmp_path / "converted")),
  }
  for name, (start, model_keys) in starts.items():
    common = [*TINY, *model_keys, f"load_parameters_path={start}"]
    run_train(tmp_path, *common, f"run_name={name}_ce", "steps=1", "enable_checkpointing=false")
    run_train(tmp_path, *common, f"run_name={name}", "steps=2", *feature_kd)
    ce_first = read_metrics(tmp_path / f"{name}_ce")[0]
    kd_records = read_metrics(tmp_path / name)
    # the first step's CE is that of the loaded parameters on the first batch (a fresh init's would differ)
    assert kd_records[0]["kd/hard_loss"] == pytest.approx(ce_first["loss"], rel=1e-5), name
    assert all("kd/feature_loss" in r for r in kd_records) and len(kd_records) == 2

  # the feature student's export is its decoder's parameters, tensor for tensor, with no special case
  step_dir = params_io.latest_step_dir(str(tmp_path / "from_hf"))
  _convert("--to_hf", "--checkpoint", tmp_path / "from_hf", "--output", tmp_path / "exported")
  config = pyconfig.initialize(["base.yml", *_model_keys_of(tmp_path / "converted")])
  expected = hf_weights.params_to_hf(params_io.read_params_to_host(step_dir), config)
  exported = hf_weights.read_safetensors_dir(str(tmp_path / "exported"))
  assert sorted(exported) == sorted(expected)
  for tensor, value in expected.items():
    np.testing.assert_array_equal(exported[tensor], np.asarray(value, np.float32), err_msg=tensor)
