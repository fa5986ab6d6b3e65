"""Maps Hugging Face Llama / Qwen3 weights (safetensors) onto this project's parameters and back."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping

import numpy as np


def _layer_names(i: int) -> dict[str, str]:
  prefix = f"model.layers.{i}."
  return {
    "attn_norm": prefix + "input_layernorm.weight",
    "query": prefix + "self_attn.q_proj.weight",
    "key": prefix + "self_attn.k_proj.weight",
    "value": prefix + "self_attn.v_proj.weight",
    "out": prefix + "self_attn.o_proj.weight",
    "q_norm": prefix + "self_attn.q_norm.weight",
    "k_norm": prefix + "self_attn.k_norm.weight",
    "mlp_norm": prefix + "post_attention_layernorm.weight",
    "wi_gate": prefix + "mlp.gate_proj.weight",
    "wi_up": prefix + "mlp.up_proj.weight",
    "wo": prefix + "mlp.down_proj.weight",
  }


def _to_ours(name: str, w: np.ndarray, config) -> np.ndarray:
  """One HF layer tensor (torch Linear layout: out x in) in our layout."""
  d, k = config.emb_dim, config.head_dim
  if name == "query":
    return w.T.reshape(d, config.num_query_heads, k)
  if name in ("key", "value"):
    return w.T.reshape(d, config.num_kv_heads, k)
  if name == "out":
    return w.T.reshape(config.num_query_heads, k, d)
  if name in ("wi_gate", "wi_up", "wo"):
    return w.T
  return w  # norm scales


def _to_hf(name: str, w: np.ndarray) -> np.ndarray:
  if name in ("query", "key", "value"):
    return w.reshape(w.shape[0], -1).T
  if name == "out":
    return w.reshape(-1, w.shape[-1]).T
  if name in ("wi_gate", "wi_up", "wo"):
    return w.T
  return w


def _take(tensors: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
  if name not in tensors:
    raise KeyError(f"Hugging Face checkpoint has no tensor {name!r}")
  w = np.asarray(tensors[name])
  if tuple(w.shape) != tuple(shape):
    raise ValueError(f"tensor {name!r}: shape {tuple(w.shape)} does not match the config's {tuple(shape)}")
  return w


def hf_to_params(tensors: Mapping[str, np.ndarray], config, dtype=np.float32) -> dict:
  """Our parameter dict (stacked layers) from a name -> array mapping of HF weights."""
  d, f, k = config.emb_dim, config.mlp_dim, config.head_dim
  hq, hkv = config.num_query_heads * k, config.num_kv_heads * k
  hf_shapes = {
    "attn_norm": (d,),
    "query": (hq, d),
    "key": (hkv, d),
    "value": (hkv, d),
    "out": (d, hq),
    "q_norm": (k,),
    "k_norm": (k,),
    "mlp_norm": (d,),
    "wi_gate": (f, d),
    "wi_up": (f, d),
    "wo": (d, f),
  }
  names = [n for n in hf_shapes if config.use_qk_norm or n not in ("q_norm", "k_norm")]
  layers = {n: [] for n in names}
  for i in range(config.num_decoder_layers):
    hf_names = _layer_names(i)
    for n in names:
      layers[n].append(_to_ours(n, _take(tensors, hf_names[n], hf_shapes[n]), config).astype(dtype))
  params = {
    "token_embedder": _take(tensors, "model.embed_tokens.weight", (config.vocab_size, d)).astype(dtype),
    "layers": {n: np.stack(ws) for n, ws in layers.items()},
    "final_norm": _take(tensors, "model.norm.weight", (d,)).astype(dtype),
  }
  if not config.logits_via_embedding:
    params["lm_head"] = _take(tensors, "lm_head.weight", (config.vocab_size, d)).T.astype(dtype)
  return params


def params_to_hf(params: Mapping, config) -> dict[str, np.ndarray]:
  """HF tensor names -> arrays for our parameter dict (feature projections are not part of it)."""
  tensors = {
    "model.embed_tokens.weight": np.asarray(params["token_embedder"]),
    "model.norm.weight": np.asarray(params["final_norm"]),
  }
  if not config.logits_via_embedding:
    tensors["lm_head.weight"] = np.asarray(params["lm_head"]).T
  for i in range(config.num_decoder_layers):
    hf_names = _layer_names(i)
    for n, stacked in params["layers"].items():
      tensors[hf_names[n]] = np.ascontiguousarray(_to_hf(n, np.asarray(stacked[i])))
  return tensors


def read_safetensors_dir(hf_dir: str) -> dict[str, np.ndarray]:
  """All tensors of a HF folder (single file or sharded with an index), as float32 numpy arrays."""
  from safetensors import safe_open

  index = os.path.join(hf_dir, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      files = sorted({os.path.join(hf_dir, v) for v in json.load(f)["weight_map"].values()})
  else:
    files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"no .safetensors files in {hf_dir!r}")
  tensors = {}
  for path in files:
    with safe_open(path, framework="numpy") as f:
      for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
        tensors[name] = f.get_tensor(name)
  return tensors
