"""Forward-pass parity with Hugging Face transformers models built from tiny configs (fp32 logits, 1e-4)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from MaxText import pyconfig  # noqa: E402
from MaxText.model import hf_weights  # noqa: E402
from MaxText.model.decoder import Decoder  # noqa: E402

TOL = 1e-4
COMMON = dict(
  vocab_size=320,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=8,
  max_position_embeddings=256,
)


def _ours(hf_model, overrides, tensors=None):
  from flax import nnx

  config = pyconfig.from_dict(
    {
      "model_name": "default",
      "dtype": "float32",
      "vocab_size": 320,
      "emb_dim": 32,
      "mlp_dim": 64,
      "num_decoder_layers": 2,
      "num_query_heads": 4,
      "num_kv_heads": 2,
      "head_dim": 8,
      **overrides,
    }
  )
  if tensors is None:
    tensors = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  graphdef, _ = nnx.split(Decoder(config, nnx.Rngs(0)))
  return nnx.merge(graphdef, hf_weights.hf_to_params(tensors, config))


def _compare(hf_model, ours, length=48):
  tokens = np.random.default_rng(0).integers(0, 320, size=(2, length))
  with torch.no_grad():
    expected = hf_model(torch.tensor(tokens)).logits.numpy()
  got = np.asarray(ours.logits(tokens))
  assert np.max(np.abs(got - expected)) < TOL


def test_llama_with_llama3_rope_scaling_matches_transformers():
  torch.manual_seed(0)
  rope = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
  }
  hf = transformers.LlamaForCausalLM(
    transformers.LlamaConfig(**COMMON, rope_parameters=rope, rms_norm_eps=1e-5, tie_word_embeddings=False)
  ).eval()
  ours = _ours(
    hf,
    {
      "rope_theta": 500000.0,
      "rope_scaling_factor": 8.0,
      "rope_original_max_position": 16,
      "normalization_layer_epsilon": 1e-5,
    },
  )
  _compare(hf, ours)


def test_qwen3_with_qk_norm_and_tied_embeddings_matches_transformers(tmp_path):
  torch.manual_seed(1)
  hf = transformers.Qwen3ForCausalLM(
    transformers.Qwen3Config(
      **COMMON,
      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
      rms_norm_eps=1e-6,
      tie_word_embeddings=True,
    )
  ).eval()
  hf.save_pretrained(tmp_path)  # read back through safetensors, as real checkpoints are
  ours = _ours(
    hf,
    {"rope_theta": 1000000.0, "use_qk_norm": True, "logits_via_embedding": True, "normalization_layer_epsilon": 1e-6},
    hf_weights.read_safetensors_dir(str(tmp_path)),
  )
  _compare(hf, ours)


def test_qwen2_with_qkv_biases_matches_transformers():
  torch.manual_seed(3)
  common = {k: v for k, v in COMMON.items() if k != "head_dim"}  # Qwen2 has head_dim = hidden / heads
  hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, rms_norm_eps=1e-6)).eval()
  with torch.no_grad():  # transformers initialises biases to zero, which would test nothing
    for name, param in hf.named_parameters():
      if name.endswith("bias"):
        param.normal_(0.0, 0.5)
  ours = _ours(hf, {"use_qkv_bias": True, "normalization_layer_epsilon": 1e-6})
  _compare(hf, ours)


def test_converted_checkpoint_loads_as_parameters_and_matches_transformers(tmp_path):
  import jax

  from MaxText import convert_hf_checkpoint
  from MaxText.model import params_io
  from MaxText.model.decoder import abstract_model, bind, split_params

  torch.manual_seed(2)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, tie_word_embeddings=False)).eval()
  hf.save_pretrained(tmp_path / "hf")
  keys = [
    "vocab_size=320",
    "emb_dim=32",
    "mlp_dim=64",
    "num_decoder_layers=2",
    "num_query_heads=4",
    "num_kv_heads=2",
    "head_dim=8",
    "dtype=float32",
    "normalization_layer_epsilon=1e-6",
  ]
  convert_hf_checkpoint.main(
    ["--hf_dir", str(tmp_path / "hf"), "--output", str(tmp_path / "ckpt"), "--model_name", "default", "--set", *keys]
  )
  config = pyconfig.initialize(["base.yml", *keys])
  graphdef, abstract, _ = split_params(abstract_model(config))
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  params = params_io.load_params(str(tmp_path / "ckpt"), abstract, shardings)
  _compare(hf, bind(graphdef, params))
  with pytest.raises(SystemExit, match="--model_name: emb_dim=64 but .*config.json has 32"):
    convert_hf_checkpoint.main(
      [
        "--hf_dir",
        str(tmp_path / "hf"),
        "--output",
        str(tmp_path / "bad"),
        "--model_name",
        "default",
        "--set",
        *keys[:1],
        "emb_dim=64",
        *keys[2:],
      ]
    )
