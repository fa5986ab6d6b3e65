"""Hugging Face Llama / Qwen2 / Qwen3 tensors <-> this project's parameters, one tensor at a time.

HF stores each layer's tensors separately in torch Linear layout (out x in); we store every layer
tensor stacked on a leading `layers` axis with heads split out. Import fills preallocated stacked
arrays layer by layer and export yields HF tensors lazily, so neither ever holds a model twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from MaxText.config import storage
from MaxText.config.errors import BadInputError, MissingFieldError, MissingFileError

_QK_NORM = ("q_norm", "k_norm")
_QKV_BIAS = ("query_bias", "key_bias", "value_bias")


def _layer_names(i: int) -> dict[str, str]:
  prefix = f"model.layers.{i}."
  return {
    "attn_norm": prefix + "input_layernorm.weight",
    "query": prefix + "self_attn.q_proj.weight",
    "key": prefix + "self_attn.k_proj.weight",
    "value": prefix + "self_attn.v_proj.weight",
    "query_bias": prefix + "self_attn.q_proj.bias",
    "key_bias": prefix + "self_attn.k_proj.bias",
    "value_bias": prefix + "self_attn.v_proj.bias",
    "out": prefix + "self_attn.o_proj.weight",
    "q_norm": prefix + "self_attn.q_norm.weight",
    "k_norm": prefix + "self_attn.k_norm.weight",
    "mlp_norm": prefix + "post_attention_layernorm.weight",
    "wi_gate": prefix + "mlp.gate_proj.weight",
    "wi_up": prefix + "mlp.up_proj.weight",
    "wo": prefix + "mlp.down_proj.weight",
  }


def _layer_shapes(config) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
  """Per-layer tensor name -> (HF shape, our shape), for the tensors this config has."""
  d, f, k = config.emb_dim, config.mlp_dim, config.head_dim
  h, g = config.num_query_heads, config.num_kv_heads
  shapes = {
    "attn_norm": ((d,), (d,)),
    "query": ((h * k, d), (d, h, k)),
    "key": ((g * k, d), (d, g, k)),
    "value": ((g * k, d), (d, g, k)),
    "query_bias": ((h * k,), (h, k)),
    "key_bias": ((g * k,), (g, k)),
    "value_bias": ((g * k,), (g, k)),
    "out": ((d, h * k), (h, k, d)),
    "q_norm": ((k,), (k,)),
    "k_norm": ((k,), (k,)),
    "mlp_norm": ((d,), (d,)),
    "wi_gate": ((f, d), (d, f)),
    "wi_up": ((f, d), (d, f)),
    "wo": ((d, f), (f, d)),
  }
  skip = (() if config.use_qk_norm else _QK_NORM) + (() if config.use_qkv_bias else _QKV_BIAS)
  return {name: s for name, s in shapes.items() if name not in skip}


def _to_ours(name: str, w: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
  if name in ("query", "key", "value", "out", "wi_gate", "wi_up", "wo"):
    w = w.T  # torch Linear stores out x in
  return w.reshape(our_shape)


def _to_hf(name: str, w: np.ndarray, hf_shape: tuple[int, ...]) -> np.ndarray:
  if name in ("query", "key", "value"):
    return w.reshape(w.shape[0], -1).T
  if name == "out":
    return w.reshape(-1, w.shape[-1]).T
  if name in ("wi_gate", "wi_up", "wo"):
    return w.T
  return w.reshape(hf_shape)


def _take(tensors: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
  if name not in tensors:
    raise MissingFieldError(f"Hugging Face checkpoint has no tensor {name!r}")
  w = np.asarray(tensors[name])
  if tuple(w.shape) != tuple(shape):
    raise BadInputError(f"tensor {name!r}: shape {tuple(w.shape)} does not match the config's {tuple(shape)}")
  if not np.isfinite(w).all():
    raise BadInputError(f"tensor {name!r}: holds NaN or Inf values; a checkpoint with them cannot train or serve")
  return w


def hf_to_params(
  tensors: Mapping[str, np.ndarray], config, dtype=np.float32, progress: Callable = iter, place: Callable = None
) -> dict:
  """Our parameter dict (stacked layers) from a name -> array mapping read one tensor at a time.

  Each stacked parameter is filled layer by layer and then handed to `place` (e.g. jax.device_put)
  before the next is built, so the peak is the placed output plus one stacked array. `progress`
  wraps the loop over parameters (e.g. tqdm). Extra HF tensors (rotary caches and the like) are ignored.
  """
  place = place or (lambda x: x)
  d, v = config.emb_dim, config.vocab_size
  n = config.num_decoder_layers
  layers = {}
  for name, (hf_shape, our_shape) in progress(list(_layer_shapes(config).items())):
    stacked = np.empty((n, *our_shape), dtype)
    for i in range(n):
      stacked[i] = _to_ours(name, _take(tensors, _layer_names(i)[name], hf_shape), our_shape)
    layers[name] = place(stacked)
    del stacked
  params = {
    "token_embedder": place(_take(tensors, "model.embed_tokens.weight", (v, d)).astype(dtype)),
    "layers": layers,
    "final_norm": place(_take(tensors, "model.norm.weight", (d,)).astype(dtype)),
  }
  if not config.logits_via_embedding:
    params["lm_head"] = place(_take(tensors, "lm_head.weight", (v, d)).T.astype(dtype))
  return params


def hf_tensor_specs(config) -> list[tuple[str, tuple[int, ...]]]:
  """(HF name, HF shape) of every tensor an export writes, in the order `iter_hf_tensors` yields them."""
  d, v = config.emb_dim, config.vocab_size
  specs = [("model.embed_tokens.weight", (v, d))]
  for i in range(config.num_decoder_layers):
    hf_names = _layer_names(i)
    specs += [(hf_names[name], hf_shape) for name, (hf_shape, _) in _layer_shapes(config).items()]
  specs.append(("model.norm.weight", (d,)))
  if not config.logits_via_embedding:
    specs.append(("lm_head.weight", (v, d)))
  return specs


def hf_tensor(params: Mapping, config, hf_name: str) -> np.ndarray:
  """One HF tensor, built from our parameters on demand (feature-KD projections have no HF name)."""
  if hf_name == "model.embed_tokens.weight":
    return np.asarray(params["token_embedder"])
  if hf_name == "model.norm.weight":
    return np.asarray(params["final_norm"])
  if hf_name == "lm_head.weight":
    return np.ascontiguousarray(np.asarray(params["lm_head"]).T)
  layer = int(hf_name.split(".")[2])
  shapes = _layer_shapes(config)
  for name, full_name in _layer_names(layer).items():
    if full_name == hf_name and name in shapes:
      return np.ascontiguousarray(_to_hf(name, np.asarray(params["layers"][name][layer]), shapes[name][0]))
  raise KeyError(f"no parameter maps to Hugging Face tensor {hf_name!r}")


def iter_hf_tensors(params: Mapping, config) -> Iterator[tuple[str, np.ndarray]]:
  for hf_name, _ in hf_tensor_specs(config):
    yield hf_name, hf_tensor(params, config, hf_name)


def params_to_hf(params: Mapping, config) -> dict[str, np.ndarray]:
  """All HF tensors at once (tests and small models; exports stream with `iter_hf_tensors`)."""
  return dict(iter_hf_tensors(params, config))


def _open(path: str):
  from safetensors import safe_open

  try:
    return safe_open(storage.local_copy(path), framework="numpy")  # safetensors maps local files only
  except Exception as e:  # noqa: BLE001 - SafetensorError (not exported): a truncated or foreign file
    raise BadInputError(f"{path}: not a readable safetensors file ({e})") from None


class LazySafetensors(Mapping):
  """HF tensor name -> numpy array of a (single or sharded) safetensors folder, read when asked for."""

  def __init__(self, hf_dir: str):
    index = storage.join(hf_dir, "model.safetensors.index.json")
    if storage.isfile(index):
      with storage.open_file(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    else:
      weight_map = {}
      for name in sorted(storage.listdir(hf_dir)):
        if name.endswith(".safetensors"):
          with _open(storage.join(hf_dir, name)) as f:
            weight_map.update(dict.fromkeys(f.keys(), name))  # noqa: SIM118 (safe_open is not a dict)
    if not weight_map:
      raise MissingFileError(f"--hf_dir: no .safetensors files in {hf_dir!r}")
    self._dir, self._map = hf_dir, weight_map

  def __getitem__(self, name: str) -> np.ndarray:
    path = storage.join(self._dir, self._map[name])
    if not storage.isfile(path):
      raise MissingFileError(f"{path}: listed in the index for tensor {name!r} but missing")
    with _open(path) as f:
      try:
        return f.get_tensor(name)  # bfloat16 stays bfloat16 (ml_dtypes)
      except Exception as e:  # noqa: BLE001 - SafetensorError: the data of a truncated file
        raise BadInputError(f"{path}: tensor {name!r} cannot be read ({e}); a truncated file?") from None

  def __iter__(self) -> Iterator[str]:
    return iter(self._map)

  def __len__(self) -> int:
    return len(self._map)


def read_safetensors_dir(hf_dir: str, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
  """Tensors of a HF folder (all of them, or `names`), as numpy arrays in their stored dtype."""
  lazy = LazySafetensors(hf_dir)
  return {name: lazy[name] for name in (lazy if names is None else names)}
