"""A llama.cpp GGUF file seen as a Hugging Face checkpoint: its config.json fields and its tensors.

The GGUF is turned into what `hf_config` and `hf_weights` already read (HF field names, HF tensor
names in torch Linear layout), so a GGUF import is the same conversion as a safetensors one:
- metadata `llama.embedding_length`, ... -> `hidden_size`, ... (Llama, Qwen2, Qwen3 architectures);
- tensors `blk.N.attn_q.weight`, ... -> `model.layers.N.self_attn.q_proj.weight`, ..., dequantized to
  float32 one at a time (the file is memory-mapped, so a large model is never read whole);
- llama.cpp's converter reorders the rows of Llama's Q and K projections (RoPE's interleaved pairs,
  see `_undo_rope_permutation`); that is undone here. Qwen files are written without it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from MaxText.config import storage
from MaxText.config.errors import BadInputError, MissingFileError, UserError

# GGUF `general.architecture` -> (HF architecture, Q/K rows permuted by llama.cpp's converter)
ARCHITECTURES = {
  "llama": ("LlamaForCausalLM", True),
  "qwen2": ("Qwen2ForCausalLM", False),
  "qwen3": ("Qwen3ForCausalLM", False),
}

# Tensor types dequantized here; each is checked against transformers' own dequantization in the tests.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

_GLOBAL_NAMES = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
  "attn_norm.weight": "input_layernorm.weight",
  "attn_q.weight": "self_attn.q_proj.weight",
  "attn_k.weight": "self_attn.k_proj.weight",
  "attn_v.weight": "self_attn.v_proj.weight",
  "attn_q.bias": "self_attn.q_proj.bias",
  "attn_k.bias": "self_attn.k_proj.bias",
  "attn_v.bias": "self_attn.v_proj.bias",
  "attn_output.weight": "self_attn.o_proj.weight",
  "attn_q_norm.weight": "self_attn.q_norm.weight",
  "attn_k_norm.weight": "self_attn.k_norm.weight",
  "ffn_norm.weight": "post_attention_layernorm.weight",
  "ffn_gate.weight": "mlp.gate_proj.weight",
  "ffn_up.weight": "mlp.up_proj.weight",
  "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(.+)")


class GGUFError(UserError, ValueError):
  """A GGUF file this converter cannot turn into the same model."""


def hf_name(gguf_name: str) -> str | None:
  """The HF tensor name of a GGUF tensor (None for tensors with no HF counterpart)."""
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  match = _LAYER_PATTERN.fullmatch(gguf_name)
  if match and match.group(2) in _LAYER_NAMES:
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
  return None


def _undo_rope_permutation(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute`: per head it stored rows (0, 2, 4, ..., 1, 3, 5, ...) of HF's
  half-split RoPE layout as interleaved pairs; this puts each head's rows back in HF's order."""
  half = w.shape[0] // num_heads // 2
  return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class TruncatedGGUF(Exception):
  """A tensor's bytes run past the end of the file (an interrupted download or copy)."""


def _checked_reader(gguf):
  """gguf's reader, checking each tensor's byte range against the file's size first: on a truncated file
  the reader itself fails in numpy ("cannot reshape array of size ..."), which names neither the tensor
  nor the cause."""

  class CheckedReader(gguf.GGUFReader):
    def _build_tensors(self, start_offs, fields):
      for field in fields:
        _, name, _, dims, raw_type, offset = field.parts
        block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(raw_type[0]))]
        begin = int(start_offs) + int(offset[0])
        end = begin + int(np.prod(dims, dtype=np.int64)) * type_size // block_size
        if end > len(self.data):
          raise TruncatedGGUF(
            f"tensor {bytes(name).decode('utf-8', 'replace')!r} needs bytes {begin}..{end}, "
            f"the file ends at {len(self.data)}"
          )
      super()._build_tensors(start_offs, fields)

  return CheckedReader


class GGUFFile:
  """Metadata and lazily dequantized tensors of one GGUF file."""

  def __init__(self, path: str):
    import gguf

    if not storage.isfile(path):
      raise MissingFileError(f"--gguf: no file at {path!r}")
    try:
      self._reader = _checked_reader(gguf)(storage.local_copy(path), "r")  # memory-mapped: local only
    except TruncatedGGUF as e:
      raise BadInputError(f"--gguf: {path!r} is truncated: {e}") from None
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError/struct.error/IndexError on foreign bytes
      raise BadInputError(f"--gguf: {path!r} is not a readable GGUF file ({type(e).__name__}: {e})") from None
    self.path = path
    self.metadata = {name: _field_value(field) for name, field in self._reader.fields.items()}
    self._tensors = {t.name: t for t in self._reader.tensors}
    self.architecture = str(self.metadata.get("general.architecture", "?"))
    if self.architecture not in ARCHITECTURES:
      raise GGUFError(
        f"--gguf: {path}: architecture {self.architecture!r} is not supported ({', '.join(ARCHITECTURES)})"
      )

  def key(self, suffix: str, default: Any = None) -> Any:
    """An architecture field, e.g. key("block_count") reads `llama.block_count`."""
    return self.metadata.get(f"{self.architecture}.{suffix}", default)

  def tensor_names(self) -> list[str]:
    return list(self._tensors)

  def check_types(self) -> None:
    """Refuses, before anything is written, a file holding a tensor type this converter cannot read."""
    for name, info in self._tensors.items():
      kind = info.tensor_type.name
      if kind not in SUPPORTED_TYPES and hf_name(name) is not None:
        raise GGUFError(
          f"--gguf: {self.path}: tensor {name!r} is stored as {kind}, which this converter does not read "
          f"(supported: {', '.join(SUPPORTED_TYPES)}); convert from the safetensors checkpoint instead"
        )

  def tensor(self, name: str) -> np.ndarray:
    """One tensor dequantized to float32 in numpy (row-major, HF's out x in) layout."""
    from gguf import quants

    info = self._tensors[name]
    return np.asarray(quants.dequantize(info.data, info.tensor_type), dtype=np.float32)


def _field_value(field) -> Any:
  try:
    return field.contents()
  except Exception as e:  # noqa: BLE001 - a malformed field of an otherwise readable file
    raise BadInputError(f"--gguf: metadata field {field.name!r} cannot be read ({e})") from None


def _refuse_unsupported(gguf_file: GGUFFile, head_dim: int) -> None:
  scaling = gguf_file.key("rope.scaling.type", "none")
  if scaling not in ("none", "", None) or "rope_freqs.weight" in gguf_file.tensor_names():
    raise GGUFError(f"--gguf: {gguf_file.path}: RoPE scaling ({scaling}) in a GGUF file is not supported")
  rotary = gguf_file.key("rope.dimension_count", head_dim)
  if rotary != head_dim:
    raise GGUFError(f"--gguf: {gguf_file.path}: partial rotary ({rotary} of {head_dim} dims) is not supported")
  for suffix in ("attention.sliding_window", "expert_count"):
    if gguf_file.key(suffix):
      raise GGUFError(f"--gguf: {gguf_file.path}: {gguf_file.architecture}.{suffix} is not supported")


def _float32_value(value) -> float:
  """GGUF stores these as float32 (1e-5 reads back as 9.9999997e-06): the shortest decimal that is the
  same float32, i.e. the value the model was made with, so configs and presets compare equal."""
  return float(str(np.float32(value)))


def hf_config_of(gguf_file: GGUFFile) -> dict[str, Any]:
  """The Hugging Face config.json fields this GGUF's metadata states."""
  required = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
  for suffix in required:
    if gguf_file.key(suffix) is None:
      raise GGUFError(f"--gguf: {gguf_file.path}: metadata has no {gguf_file.architecture}.{suffix}")
  heads = int(gguf_file.key("attention.head_count"))
  width = int(gguf_file.key("embedding_length"))
  head_dim = int(gguf_file.key("attention.key_length", width // heads))
  _refuse_unsupported(gguf_file, head_dim)
  gguf_file.check_types()
  tokens = gguf_file.metadata.get("tokenizer.ggml.tokens") or []
  return {
    "architectures": [ARCHITECTURES[gguf_file.architecture][0]],
    "vocab_size": int(gguf_file.key("vocab_size", len(tokens))),
    "hidden_size": width,
    "num_hidden_layers": int(gguf_file.key("block_count")),
    "num_attention_heads": heads,
    "num_key_value_heads": int(gguf_file.key("attention.head_count_kv", heads)),
    "head_dim": head_dim,
    "intermediate_size": int(gguf_file.key("feed_forward_length")),
    "rms_norm_eps": _float32_value(gguf_file.key("attention.layer_norm_rms_epsilon", 1e-6)),
    "rope_theta": _float32_value(gguf_file.key("rope.freq_base", 10000.0)),
    "tie_word_embeddings": "output.weight" not in gguf_file.tensor_names(),
    "max_position_embeddings": int(gguf_file.key("context_length", 2048)),
  }


class GGUFTensors(Mapping):
  """HF tensor name -> float32 array of a GGUF file, dequantized (and un-permuted) when asked for."""

  def __init__(self, gguf_file: GGUFFile, hf: dict[str, Any]):
    self._file = gguf_file
    self._names = {hf_name(n): n for n in gguf_file.tensor_names() if hf_name(n) is not None}
    permuted = ARCHITECTURES[gguf_file.architecture][1]
    self._heads = {"q_proj": hf["num_attention_heads"], "k_proj": hf["num_key_value_heads"]} if permuted else {}

  def __getitem__(self, name: str) -> np.ndarray:
    w = self._file.tensor(self._names[name])
    projection = name.split(".")[-2]
    if projection in self._heads and name.endswith(".weight"):
      w = _undo_rope_permutation(w, self._heads[projection])
    return w

  def __contains__(self, name: object) -> bool:  # without dequantizing (Mapping's default reads the item)
    return name in self._names

  def __iter__(self) -> Iterator[str]:
    return iter(self._names)

  def __len__(self) -> int:
    return len(self._names)
