"""The tokenizer a GGUF file describes, written as Hugging Face `tokenizer.json` + `tokenizer_config.json`.

GGUF stores a byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`, used by Llama 3, Qwen and
SmolLM) as its token strings, their types, the merges and the name of the pre-tokenizer that splits
text before BPE (`tokenizer.ggml.pre`). The split expressions below are llama.cpp's for those names
(llama-vocab.cpp), so ids match what llama.cpp and the original Hugging Face tokenizer produce.
Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added tokens.
The chat template and the bos / eos / pad tokens go into tokenizer_config.json, so a checkpoint made
from a GGUF carries everything `AutoTokenizer.from_pretrained` and `apply_chat_template` need.
"""

from __future__ import annotations

import json
from typing import Any

from MaxText.config import storage
from MaxText.config.errors import UserError

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.ggml.pre -> (splits applied in order, ignore_merges as llama.cpp sets it)
PRE_TOKENIZERS = {
  "default": ((_GPT2_SPLIT,), False),
  "gpt2": ((_GPT2_SPLIT,), False),
  "smollm": ((r"\p{N}", _GPT2_SPLIT), False),  # digits one by one, then GPT-2's split
  "llama-bpe": ((_LLAMA3_SPLIT,), True),
  "llama3": ((_LLAMA3_SPLIT,), True),
  "qwen2": ((_QWEN2_SPLIT,), False),
}
_CONTROL, _USER_DEFINED = 3, 4


class GGUFTokenizerError(UserError, ValueError):
  pass


def _required(metadata: dict[str, Any], key: str, source: str) -> Any:
  if not metadata.get(key):
    raise GGUFTokenizerError(f"--gguf: {source}: metadata has no {key}; the file carries no usable tokenizer")
  return metadata[key]


def build_tokenizer(metadata: dict[str, Any], source: str):
  """A `tokenizers.Tokenizer` equal to the one the GGUF metadata describes."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

  kind = metadata.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise GGUFTokenizerError(f"--gguf: {source}: tokenizer.ggml.model {kind!r} is not supported (gpt2: byte-level BPE)")
  pre = metadata.get("tokenizer.ggml.pre", "default")
  if pre not in PRE_TOKENIZERS:
    raise GGUFTokenizerError(
      f"--gguf: {source}: tokenizer.ggml.pre {pre!r} is not supported ({', '.join(PRE_TOKENIZERS)})"
    )
  tokens = list(_required(metadata, "tokenizer.ggml.tokens", source))
  merges = [tuple(m.split(" ", 1)) for m in _required(metadata, "tokenizer.ggml.merges", source)]
  splits, ignore_merges = PRE_TOKENIZERS[pre]
  bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=ignore_merges)
  tok = Tokenizer(bpe)
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in splits]
    + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
  )
  tok.decoder = decoders.ByteLevel()
  types = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
  if len(types) != len(tokens):
    raise GGUFTokenizerError(f"--gguf: {source}: {len(types)} token types for {len(tokens)} tokens")
  kinds = list(zip(tokens, types, strict=True))
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in kinds if k == _CONTROL])
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in kinds if k == _USER_DEFINED])
  return tok


def _token(metadata: dict[str, Any], field: str) -> str | None:
  token_id = metadata.get(f"tokenizer.ggml.{field}_token_id")
  tokens = metadata.get("tokenizer.ggml.tokens") or []
  return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None


def tokenizer_config(metadata: dict[str, Any], context_length: int) -> dict[str, Any]:
  config: dict[str, Any] = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "model_max_length": context_length,
    "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
    "clean_up_tokenization_spaces": False,
  }
  for field in ("bos", "eos", "padding", "unknown"):
    token = _token(metadata, field)
    if token is not None:
      config[{"padding": "pad_token", "unknown": "unk_token"}.get(field, f"{field}_token")] = token
  if metadata.get("tokenizer.chat_template"):
    config["chat_template"] = metadata["tokenizer.chat_template"]
  return config


def write_tokenizer_files(metadata: dict[str, Any], source: str, out_dir: str, context_length: int) -> None:
  """tokenizer.json and tokenizer_config.json of the GGUF's tokenizer, into `out_dir`."""
  storage.write_text_atomic(storage.join(out_dir, "tokenizer.json"), build_tokenizer(metadata, source).to_str())
  with storage.open_file(storage.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(tokenizer_config(metadata, context_length), f, indent=1)
