"""Writes a trained model as a Hugging Face folder that `AutoModelForCausalLM.from_pretrained` loads.

The folder holds config.json, generation_config.json, safetensors (one file, or shards past a size
with `model.safetensors.index.json`) and the tokenizer files. Tensors are built and written shard by
shard, so the export holds the parameters plus one shard, never a second copy of the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import ml_dtypes
import numpy as np

from MaxText.config import storage
from MaxText.data import tokenizer
from MaxText.model import hf_config, hf_weights

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
_HF_TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "added_tokens.json",
  "vocab.json",
  "merges.txt",
  "tokenizer.model",
)


def _write_json(path: str, obj) -> None:
  with storage.open_file(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")


def plan_shards(specs: list[tuple[str, tuple[int, ...]]], itemsize: int, max_shard_bytes: int) -> list[list[str]]:
  """Tensor names grouped in order into shards of at most max_shard_bytes (a bigger tensor gets its own)."""
  shards, current, size = [], [], 0
  for name, shape in specs:
    nbytes = int(np.prod(shape)) * itemsize
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(name)
    size += nbytes
  return [*shards, current] if current else shards


def write_safetensors(params: Mapping, config, out_dir: str, dtype: str, max_shard_bytes: int, progress=iter) -> int:
  """Writes the weights; returns the number of shard files."""
  from safetensors.numpy import save_file

  np_dtype = DTYPES[dtype]
  specs = hf_weights.hf_tensor_specs(config)
  shards = plan_shards(specs, np.dtype(np_dtype).itemsize, max_shard_bytes)
  weight_map, total = {}, 0
  for i, names in enumerate(progress(shards)):
    file = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    tensors = {name: hf_weights.hf_tensor(params, config, name).astype(np_dtype) for name in names}
    staging = storage.LocalStaging(storage.join(out_dir, file))  # safetensors writes local files only
    save_file(tensors, staging.local, metadata={"format": "pt"})
    staging.commit()
    total += sum(t.nbytes for t in tensors.values())
    weight_map.update(dict.fromkeys(names, file))
  if len(shards) > 1:
    _write_json(
      storage.join(out_dir, "model.safetensors.index.json"),
      {"metadata": {"total_size": total}, "weight_map": weight_map},
    )
  return len(shards)


def _bytes_to_unicode() -> dict[int, str]:
  """The byte -> printable character table of byte-level BPE (GPT-2), which ByteLevel decoding inverts."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def byte_tokenizer_json() -> str:
  """A `tokenizers` tokenizer that maps text exactly as ByteTokenizer does (pad 0, BOS 1, EOS 2, byte b -> b+3)."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

  byte_tok = tokenizer.ByteTokenizer()
  vocab = {"<pad>": byte_tok.pad_id, "<s>": byte_tok.bos_id, "</s>": byte_tok.eos_id}
  vocab.update({char: b + 3 for b, char in _bytes_to_unicode().items()})
  hf_tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per byte
  hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  hf_tok.decoder = decoders.ByteLevel()
  hf_tok.add_special_tokens([AddedToken(t, special=True) for t in ("<pad>", "<s>", "</s>")])
  return hf_tok.to_str()


def _tokenizer_config(tok: tokenizer.HuggingFaceTokenizer, max_length: int) -> dict:
  return {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": tok.id_to_token(tok.bos_id),
    "eos_token": tok.id_to_token(tok.eos_id),
    "pad_token": tok.id_to_token(tok.pad_id),
    "model_max_length": max_length,
  }


def write_tokenizer_files(config, out_dir: str) -> None:
  """The run's tokenizer in Hugging Face form (the byte tokenizer becomes an equivalent tokenizer.json)."""
  path = config.tokenizer_path
  if config.tokenizer_type == "byte":
    with storage.open_file(storage.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
      f.write(byte_tokenizer_json())
  elif config.tokenizer_type == "sentencepiece":
    storage.copy(path, storage.join(out_dir, "tokenizer.model"))
    _write_json(storage.join(out_dir, "tokenizer_config.json"), {"tokenizer_class": "LlamaTokenizer"})
    return
  elif storage.isdir(path):
    for name in _HF_TOKENIZER_FILES:
      if storage.isfile(storage.join(path, name)):
        storage.copy(storage.join(path, name), storage.join(out_dir, name))
  else:
    storage.copy(path, storage.join(out_dir, "tokenizer.json"))
  if not storage.isfile(storage.join(out_dir, "tokenizer_config.json")):
    tok = tokenizer.HuggingFaceTokenizer(storage.join(out_dir, "tokenizer.json"))
    _write_json(storage.join(out_dir, "tokenizer_config.json"), _tokenizer_config(tok, config.max_target_length))


def write_hf_dir(params: Mapping, config, out_dir: str, dtype: str, max_shard_bytes: int, progress: Callable = iter):
  """The whole Hugging Face folder; returns the number of safetensors shards."""
  tok = tokenizer.build_tokenizer(config.tokenizer_type, config.tokenizer_path)
  tokenizer.check_fits_model(tok, config.vocab_size)
  hf = hf_config.hf_config_from(config, dtype, tok.bos_id, tok.eos_id, tok.pad_id)
  storage.makedirs(out_dir)
  num_shards = write_safetensors(params, config, out_dir, dtype, max_shard_bytes, progress)
  _write_json(storage.join(out_dir, "config.json"), hf)
  generation = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
  _write_json(storage.join(out_dir, "generation_config.json"), generation)
  write_tokenizer_files(config, out_dir)
  return num_shards
