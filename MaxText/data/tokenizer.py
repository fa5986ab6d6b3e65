"""Tokenizers behind one small interface: byte-level, sentencepiece `.model`, Hugging Face `tokenizer.json`."""

from __future__ import annotations

import dataclasses
import json
from typing import Protocol

import numpy as np

from MaxText.config import storage
from MaxText.config.errors import BadInputError, ConfigError, MissingFileError

# Common names of the begin/end-of-sequence tokens, tried when a tokenizer does not declare them.
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "[BOS]", "<|startoftext|>")
_EOS_NAMES = ("<|end_of_text|>", "</s>", "<eos>", "[EOS]", "<|endoftext|>", "<|im_end|>")


class Tokenizer(Protocol):
  vocab_size: int
  bos_id: int | None
  eos_id: int | None
  pad_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: list[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes shifted by 3: 0 = pad, 1 = BOS, 2 = EOS, 3..258 = bytes."""

  vocab_size: int = 259
  bos_id: int | None = 1
  eos_id: int | None = 2
  pad_id: int = 0

  def encode(self, text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]

  def decode(self, ids: list[int]) -> str:
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  def __init__(self, path: str):
    import sentencepiece as spm

    try:
      self._sp = spm.SentencePieceProcessor(model_file=storage.local_copy(path))
    except (RuntimeError, OSError) as e:
      raise BadInputError(f"tokenizer_path: {path!r} is not a sentencepiece model ({str(e)[:120]})") from None
    self.vocab_size = self._sp.get_piece_size()
    self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
    self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
    self.pad_id = max(self._sp.pad_id(), 0)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: list[int]) -> str:
    return self._sp.decode(list(ids))


class HuggingFaceTokenizer:
  """A `tokenizer.json` file or a folder holding one (and optionally `tokenizer_config.json`)."""

  def __init__(self, path: str):
    from tokenizers import Tokenizer as HFTokenizer

    folder = path if storage.isdir(path) else storage.dirname(path)
    file = storage.join(path, "tokenizer.json") if storage.isdir(path) else path
    if not storage.isfile(file):
      raise MissingFileError(f"tokenizer_path: no tokenizer.json at {path!r}")
    try:
      self._tok = HFTokenizer.from_str(storage.read_text(file))
    except Exception as e:  # noqa: BLE001 - `tokenizers` raises a bare Exception for a file it cannot parse
      raise BadInputError(f"tokenizer_path: {file!r} is not a Hugging Face tokenizer.json ({e})") from None
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    declared = _read_declared_specials(storage.join(folder, "tokenizer_config.json"))
    self.bos_id = self._find_id(declared.get("bos_token"), _BOS_NAMES)
    self.eos_id = self._find_id(declared.get("eos_token"), _EOS_NAMES)
    pad = self._find_id(declared.get("pad_token"), ("<pad>", "<|pad|>", "[PAD]"))
    self.pad_id = pad if pad is not None else 0

  def _find_id(self, declared: str | None, names: tuple[str, ...]) -> int | None:
    for name in (declared,) if declared else names:
      token_id = self._tok.token_to_id(name)
      if token_id is not None:
        return token_id
    return None

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """`add_special_tokens`: what tokenizer.json's post-processor adds (a BOS for Llama-3-style files;
    nothing for many others), as transformers' tokenizers add by default."""
    return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

  def decode(self, ids: list[int]) -> str:
    return self._tok.decode(list(ids))

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and each token's (start, end) character offsets in `text` (cross-tokenizer KD aligns on them)."""
    encoding = self._tok.encode(text, add_special_tokens=False)
    return encoding.ids, encoding.offsets

  def to_json(self) -> dict:
    return json.loads(self._tok.to_str())

  def id_to_token(self, token_id: int | None) -> str | None:
    return None if token_id is None else self._tok.id_to_token(token_id)


def _read_declared_specials(config_path: str) -> dict[str, str]:
  if not storage.isfile(config_path):
    return {}
  with storage.open_file(config_path, encoding="utf-8") as f:
    raw = json.load(f)
  specials = {}
  for key in ("bos_token", "eos_token", "pad_token"):
    value = raw.get(key)
    if isinstance(value, dict):  # {"content": "<s>", ...}
      value = value.get("content")
    if isinstance(value, str):
      specials[key] = value
  return specials


def build_tokenizer(tokenizer_type: str, tokenizer_path: str = "") -> Tokenizer:
  if tokenizer_type == "byte":
    return ByteTokenizer()
  if not storage.exists(tokenizer_path):
    raise MissingFileError(f"tokenizer_path: {tokenizer_path!r} does not exist")
  if tokenizer_type == "sentencepiece":
    return SentencePieceTokenizer(tokenizer_path)
  if tokenizer_type == "huggingface":
    return HuggingFaceTokenizer(tokenizer_path)
  raise ConfigError(f"tokenizer_type: unknown {tokenizer_type!r}")


def check_fits_model(tokenizer: Tokenizer, vocab_size: int) -> None:
  if tokenizer.vocab_size > vocab_size:
    raise ConfigError(
      f"vocab_size: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {vocab_size}"
    )


def encode_documents(tokenizer: Tokenizer, texts: list[str], add_bos: bool, add_eos: bool) -> list[np.ndarray]:
  """Token ids of each document as int32, with BOS/EOS where the tokenizer has them."""
  if hasattr(tokenizer, "encode_batch"):
    encoded = tokenizer.encode_batch(texts)
  else:
    encoded = [tokenizer.encode(t) for t in texts]
  prefix = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
  suffix = [tokenizer.eos_id] if add_eos and tokenizer.eos_id is not None else []
  return [np.asarray(prefix + ids + suffix, dtype=np.int32) for ids in encoded]
