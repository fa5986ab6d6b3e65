"""A checkpoint of this project written as one llama.cpp GGUF file (llama, qwen2, qwen3 architectures).

The inverse of `gguf_weights`: the decoder's tensors go out under llama.cpp's names in HF's (out x in)
layout, Llama's Q and K rows permuted as llama.cpp's converter permutes them, quantized by the `gguf`
package (`gguf.quants.quantize`); the metadata is what llama.cpp and transformers read for these
architectures, written with `gguf.GGUFWriter`; the tokenizer is the checkpoint's Hugging Face
`tokenizer.json` as GGUF's byte-level BPE fields, with `gguf.SpecialVocab` adding the bos / eos / pad ids
and the chat template from `tokenizer_config.json`.

Two things are written here by hand because the `gguf` package leaves them to llama.cpp's converter
script (which needs transformers and the Hub): the token list with its types (special added tokens are
CONTROL, other added tokens USER_DEFINED, ids the tokenizer lacks below `vocab_size` UNUSED padding), and
the name of the pre-tokenizer (`tokenizer.ggml.pre`), found as llama.cpp finds it, by the encodings it
gives: the known name whose split reproduces the tokenizer's ids on a probe text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from MaxText.config import storage
from MaxText.config.errors import UserError
from MaxText.data import gguf_tokenizer
from MaxText.model import gguf_weights, hf_config, hf_weights

# --gguf_type -> (tensor type of the weight matrices, llama.cpp's file type)
GGUF_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
_FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0"}
_FILE_TYPES["Q4_0"] = "MOSTLY_Q4_0"
_ARCHITECTURES = {hf: name for name, (hf, _) in gguf_weights.ARCHITECTURES.items()}
_PERMUTED = {name for name, (_, permuted) in gguf_weights.ARCHITECTURES.items() if permuted}
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5
# digits, contractions, runs of spaces and newlines, punctuation, accents, CJK: the cases the splits differ on
PROBE_TEXT = (
  "Hello world! It's 2024: 12345 apples, 3.14159 pies.\n\n  Indented\tand 'quoted' -- ÄÖÜ café 你好世界 "
  "I'LL SEE you'd've\r\n\r\nend   with  spaces  "
)


class GGUFExportError(UserError, ValueError):
  """A model, tokenizer or type this exporter cannot express in a GGUF file."""


def gguf_name(hf_name: str) -> str | None:
  """The llama.cpp name of a HF tensor (the inverse of gguf_weights.hf_name)."""
  global_names = {hf: gguf for gguf, hf in gguf_weights._GLOBAL_NAMES.items()}
  if hf_name in global_names:
    return global_names[hf_name]
  layer_names = {hf: gguf for gguf, hf in gguf_weights._LAYER_NAMES.items()}
  parts = hf_name.split(".", 3)
  if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in layer_names:
    return f"blk.{parts[2]}.{layer_names[parts[3]]}"
  return None


def permute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
  """llama.cpp's `permute`: per head, HF's half-split RoPE rows become interleaved pairs (the inverse of
  gguf_weights._undo_rope_permutation)."""
  half = w.shape[0] // num_heads // 2
  return w.reshape(num_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_exportable(config, gguf_type: str) -> str:
  """The GGUF architecture name; refuses, naming it, what a GGUF file of these architectures cannot say."""
  if gguf_type not in GGUF_TYPES:
    raise GGUFExportError(f"--gguf_type: expected one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
  arch = _ARCHITECTURES[hf_config.architecture_of(config)]
  if config.rope_scaling_factor:
    raise GGUFExportError(
      f"--to_gguf: Llama-3 RoPE scaling (rope_scaling_factor={config.rope_scaling_factor}) is not written here "
      "(llama.cpp keeps it as a rope_freqs tensor, which this project's GGUF import refuses too); export with "
      "--to_hf and convert that folder with llama.cpp's convert_hf_to_gguf.py"
    )
  if config.tokenizer_type != "huggingface":
    raise GGUFExportError(
      f"--to_gguf: tokenizer_type={config.tokenizer_type}: a GGUF file carries a byte-level BPE tokenizer "
      "(a Hugging Face tokenizer.json); train with one, or export with --to_hf"
    )
  return arch


def _tensor_entry(name: str, w: np.ndarray, kind):
  """(data, raw type) of one tensor: vectors stay F32 (as llama.cpp writes norms and biases); a matrix whose
  rows do not split into the type's blocks falls back to F16, as llama.cpp's converter does."""
  import gguf
  from gguf import quants

  w = np.ascontiguousarray(w, dtype=np.float32)
  if w.ndim == 1 or kind == gguf.GGMLQuantizationType.F32:
    return w, gguf.GGMLQuantizationType.F32
  block_size = gguf.GGML_QUANT_SIZES[kind][0]
  if w.shape[-1] % block_size:
    kind = gguf.GGMLQuantizationType.F16
  return quants.quantize(w, kind), kind


def write_tensors(writer, params: Mapping, config, arch: str, gguf_type: str) -> dict[str, int]:
  """Adds the decoder's tensors; returns how many were written per tensor type."""
  import gguf

  kind = gguf.GGMLQuantizationType[GGUF_TYPES[gguf_type]]
  heads = {"attn_q.weight": config.num_query_heads, "attn_k.weight": config.num_kv_heads}
  counts: dict[str, int] = {}
  for hf_name, w in hf_weights.iter_hf_tensors(params, config):
    name = gguf_name(hf_name)
    if name is None:
      raise GGUFExportError(f"--to_gguf: tensor {hf_name!r} has no llama.cpp name for {arch}")
    suffix = name.split(".", 2)[-1]
    if arch in _PERMUTED and suffix in heads:
      w = permute_rope_rows(np.asarray(w), heads[suffix])
    data, written = _tensor_entry(name, w, kind)
    writer.add_tensor(name, data, raw_dtype=written)
    counts[written.name] = counts.get(written.name, 0) + 1
  return counts


def write_model_metadata(writer, config, gguf_type: str) -> None:
  import gguf

  writer.add_context_length(hf_config.context_length(config))
  writer.add_embedding_length(config.emb_dim)
  writer.add_block_count(config.num_decoder_layers)
  writer.add_feed_forward_length(config.mlp_dim)
  writer.add_head_count(config.num_query_heads)
  writer.add_head_count_kv(config.num_kv_heads)
  writer.add_key_length(config.head_dim)
  writer.add_value_length(config.head_dim)
  writer.add_rope_dimension_count(config.head_dim)
  writer.add_rope_freq_base(float(config.rope_theta))
  writer.add_layer_norm_rms_eps(float(config.normalization_layer_epsilon))
  writer.add_vocab_size(config.vocab_size)
  writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES[GGUF_TYPES[gguf_type]]])


def _tokenizer_json(tokenizer_path: str) -> str:
  path = storage.join(tokenizer_path, "tokenizer.json") if storage.isdir(tokenizer_path) else tokenizer_path
  if not storage.isfile(path):
    raise GGUFExportError(f"tokenizer_path: no tokenizer.json at {tokenizer_path!r}")
  return storage.local_copy(path)


def token_fields(tokenizer_file: str, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
  """(tokens in id order padded to vocab_size, their GGUF types, merges as 'a b') of a byte-level BPE."""
  from tokenizers import Tokenizer

  with open(tokenizer_file, encoding="utf-8") as f:
    described = json.load(f)
  model, decoder = described.get("model") or {}, described.get("decoder") or {}
  if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel" or model.get("byte_fallback"):
    raise GGUFExportError(
      f"tokenizer_path: {tokenizer_file!r} is not a byte-level BPE (GGUF's gpt2 tokenizer model); "
      f"model {model.get('type')!r}, decoder {decoder.get('type')!r}"
    )
  tokenizer = Tokenizer.from_file(tokenizer_file)
  by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
  if max(by_id) >= vocab_size:
    raise GGUFExportError(f"tokenizer_path: the tokenizer has id {max(by_id)}, past vocab_size {vocab_size}")
  added = tokenizer.get_added_tokens_decoder()
  tokens, types = [], []
  for i in range(vocab_size):
    if i not in by_id:
      tokens.append(f"[PAD{i}]")
      types.append(_UNUSED)
    else:
      tokens.append(by_id[i])
      types.append((_CONTROL if added[i].special else _USER_DEFINED) if i in added else _NORMAL)
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
  return tokens, types, merges


def _split_patterns(tokenizer_file: str) -> tuple[str, ...]:
  """The regexes of the tokenizer's Split pre-tokenizers, in order (as gguf_tokenizer writes them)."""
  with open(tokenizer_file, encoding="utf-8") as f:
    pre = json.load(f).get("pre_tokenizer") or {}
  steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
  return tuple(step["pattern"].get("Regex", "") for step in steps if step.get("type") == "Split")


def pre_tokenizer_name(tokenizer_file: str, tokens: list[str], types: list[int], merges: list[str]) -> str:
  """The `tokenizer.ggml.pre` of the tokenizer: the name whose splits it holds (a tokenizer that came from
  a GGUF file), else the first whose split gives the tokenizer's own ids on PROBE_TEXT."""
  from tokenizers import Tokenizer

  patterns = _split_patterns(tokenizer_file)
  for name, (splits, _) in gguf_tokenizer.PRE_TOKENIZERS.items():
    if patterns and patterns == splits:
      return name
  want = Tokenizer.from_file(tokenizer_file).encode(PROBE_TEXT, add_special_tokens=False).ids
  metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens}
  metadata |= {"tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}
  for name in gguf_tokenizer.PRE_TOKENIZERS:
    candidate = gguf_tokenizer.build_tokenizer({**metadata, "tokenizer.ggml.pre": name}, tokenizer_file)
    if candidate.encode(PROBE_TEXT, add_special_tokens=False).ids == want:
      return name
  raise GGUFExportError(
    f"tokenizer_path: {tokenizer_file!r} splits text before BPE in a way none of llama.cpp's pre-tokenizers "
    f"known here does ({', '.join(gguf_tokenizer.PRE_TOKENIZERS)})"
  )


def write_tokenizer_metadata(writer, tokenizer_path: str, vocab_size: int) -> str:
  """The tokenizer fields; returns the pre-tokenizer name chosen."""
  from pathlib import Path

  import gguf

  tokenizer_file = _tokenizer_json(tokenizer_path)
  tokens, types, merges = token_fields(tokenizer_file, vocab_size)
  pre = pre_tokenizer_name(tokenizer_file, tokens, types, merges)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_types(types)
  writer.add_token_merges(merges)
  # bos / eos / pad ids and the chat template from tokenizer_config.json (and config.json) beside it
  special = gguf.SpecialVocab(Path(os.path.dirname(tokenizer_file)), load_merges=False, n_vocab=vocab_size)
  special.add_to_gguf(writer, quiet=True)
  return pre


def write_gguf(params: Mapping, config, path: str, gguf_type: str) -> str:
  """The whole file (written locally, then moved or uploaded into place); returns a one-line summary."""
  import gguf

  arch = check_exportable(config, gguf_type)
  staging = storage.LocalStaging(path)
  writer = gguf.GGUFWriter(staging.local, arch)
  writer.add_name(os.path.basename(path).removesuffix(".gguf"))
  write_model_metadata(writer, config, gguf_type)
  pre = write_tokenizer_metadata(writer, config.tokenizer_path, config.vocab_size)
  counts = write_tensors(writer, params, config, arch, gguf_type)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  staging.commit()
  types = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
  return f"{arch}, context {hf_config.context_length(config)}, tokenizer pre {pre!r}, tensors: {types}"
