"""Hugging Face `config.json` <-> this project's model keys, for Llama 3.x, Qwen2/2.5 and Qwen3.

Reading: every architecture field the decoder depends on is mapped; a field that would change the
maths and that this decoder does not implement (an o-projection bias, an MLP bias, another RoPE type,
another activation, sliding windows) is refused by name instead of converted into a different model.
"""

from __future__ import annotations

import json
from typing import Any

from MaxText.config import storage
from MaxText.config.errors import MissingFileError, UserError
from MaxText.config.model_keys import NOT_COMPARED

# architecture -> (model_type, q/k/v biases, q/k-norm)
ARCHITECTURES = {
  "LlamaForCausalLM": ("llama", False, False),
  "Qwen2ForCausalLM": ("qwen2", True, False),
  "Qwen3ForCausalLM": ("qwen3", False, True),
}

# HF field -> our key, for the fields copied as they are
_PLAIN_FIELDS = {
  "vocab_size": "vocab_size",
  "hidden_size": "emb_dim",
  "num_hidden_layers": "num_decoder_layers",
  "num_attention_heads": "num_query_heads",
  "num_key_value_heads": "num_kv_heads",
  "intermediate_size": "mlp_dim",
  "rms_norm_eps": "normalization_layer_epsilon",
}


class HFConfigError(UserError, ValueError):
  pass


def read_hf_config(hf_dir: str) -> dict[str, Any]:
  path = storage.join(hf_dir, "config.json")
  if not storage.isfile(path):
    raise MissingFileError(f"--hf_dir: no config.json in {hf_dir!r}")
  try:
    with storage.open_file(path, encoding="utf-8") as f:
      hf = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise HFConfigError(f"--hf_dir: {path!r} is not a readable JSON config ({e})") from None
  if not isinstance(hf, dict):
    raise HFConfigError(f"--hf_dir: {path!r} holds {type(hf).__name__}, not a config mapping")
  return hf


def _rope(hf: dict[str, Any]) -> dict[str, Any]:
  """RoPE fields from `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling` (older)."""
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = params.get("rope_type", params.get("type", "default"))
  keys: dict[str, Any] = {"rope_theta": float(theta), "rope_scaling_factor": 0.0}
  if rope_type == "llama3":
    keys.update(
      rope_scaling_factor=float(params["factor"]),
      rope_low_freq_factor=float(params["low_freq_factor"]),
      rope_high_freq_factor=float(params["high_freq_factor"]),
      rope_original_max_position=int(params["original_max_position_embeddings"]),
    )
  elif rope_type != "default":
    raise HFConfigError(f"config.json: rope_type {rope_type!r} is not supported (default, llama3)")
  return keys


def _refuse_unsupported(hf: dict[str, Any], arch: str) -> None:
  if hf.get("hidden_act", "silu") != "silu":
    raise HFConfigError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported (silu)")
  if arch != "Qwen2ForCausalLM" and hf.get("attention_bias"):
    raise HFConfigError("config.json: attention_bias=true (biases on all four projections) is not supported")
  if hf.get("mlp_bias"):
    raise HFConfigError("config.json: mlp_bias=true is not supported")
  if hf.get("use_sliding_window"):
    raise HFConfigError("config.json: use_sliding_window=true is not supported")


def model_keys_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
  """Our model keys for a HF config dict; raises HFConfigError for what this decoder cannot express."""
  arch = (hf.get("architectures") or ["?"])[0]
  if arch not in ARCHITECTURES:
    raise HFConfigError(f"config.json: architecture {arch} is not supported ({', '.join(ARCHITECTURES)})")
  _refuse_unsupported(hf, arch)
  missing = [field for field in _PLAIN_FIELDS if field not in hf]
  if missing:
    raise HFConfigError(f"config.json: missing field {missing[0]!r}")
  _, qkv_bias, qk_norm = ARCHITECTURES[arch]
  keys = {ours: hf[field] for field, ours in _PLAIN_FIELDS.items()}
  keys["num_kv_heads"] = hf.get("num_key_value_heads") or hf["num_attention_heads"]
  keys["head_dim"] = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
  keys["logits_via_embedding"] = bool(hf.get("tie_word_embeddings", False))
  keys["use_qk_norm"] = qk_norm
  keys["use_qkv_bias"] = qkv_bias
  keys["max_position_embeddings"] = int(hf.get("max_position_embeddings") or 0)
  keys.update(_rope(hf))
  return keys


def check_matches(hf_keys: dict[str, Any], config, source: str) -> None:
  """Raises naming the key when a chosen preset disagrees with what the HF config.json says."""
  for key, value in hf_keys.items():
    if key in NOT_COMPARED:  # the file's value is kept (see the converter's _import_config)
      continue
    ours = getattr(config, key)
    if ours != value and not (isinstance(value, float) and abs(ours - value) <= 1e-9 * max(abs(value), 1.0)):
      raise HFConfigError(f"--model_name: {key}={ours!r} but {source} has {value!r}")


def architecture_of(config) -> str:
  if config.use_qkv_bias and config.use_qk_norm:
    raise HFConfigError("use_qkv_bias with use_qk_norm matches no Hugging Face architecture")
  if config.use_qkv_bias:
    if config.head_dim * config.num_query_heads != config.emb_dim:
      raise HFConfigError("Qwen2 export needs head_dim * num_query_heads == emb_dim (Qwen2Config has no head_dim)")
    return "Qwen2ForCausalLM"
  return "Qwen3ForCausalLM" if config.use_qk_norm else "LlamaForCausalLM"


def context_length(config) -> int:
  """The context length an export states: the model's own (kept from its import or preset), else for a
  model made here the longest it could have been trained for: its window, or what its RoPE scaling spans."""
  if config.max_position_embeddings:
    return config.max_position_embeddings
  if config.rope_scaling_factor:
    return max(config.max_target_length, int(config.rope_original_max_position * config.rope_scaling_factor))
  return config.max_target_length


def hf_config_from(config, dtype: str, bos_id: int | None, eos_id: int | None, pad_id: int | None) -> dict:
  """A config.json that transformers loads without custom code (legacy rope fields, read by old and new)."""
  arch = architecture_of(config)
  model_type = ARCHITECTURES[arch][0]
  max_positions = context_length(config)
  rope_scaling = None
  if config.rope_scaling_factor:
    rope_scaling = {
      "rope_type": "llama3",
      "factor": config.rope_scaling_factor,
      "low_freq_factor": config.rope_low_freq_factor,
      "high_freq_factor": config.rope_high_freq_factor,
      "original_max_position_embeddings": config.rope_original_max_position,
    }
  hf = {"architectures": [arch], "model_type": model_type}
  hf.update({field: getattr(config, ours) for field, ours in _PLAIN_FIELDS.items()})
  hf.update(
    head_dim=config.head_dim,
    hidden_act="silu",
    max_position_embeddings=max_positions,
    rope_theta=config.rope_theta,
    rope_scaling=rope_scaling,
    tie_word_embeddings=config.logits_via_embedding,
    attention_bias=False,
    bos_token_id=bos_id,
    eos_token_id=eos_id,
    pad_token_id=pad_id,
    torch_dtype=dtype,
    use_cache=True,
  )
  if model_type == "llama":
    hf["mlp_bias"] = False
  if model_type == "qwen2":
    hf.update(use_sliding_window=False, max_window_layers=config.num_decoder_layers)
    del hf["attention_bias"], hf["head_dim"]
  return hf
