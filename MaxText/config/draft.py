"""The draft model of speculative decoding (`decode_draft_parameters_path`): its config, read from what is
saved beside its checkpoint like any checkpoint's, and the check that it reads the model's tokenizer."""

from __future__ import annotations

import dataclasses
import hashlib

from MaxText.config import storage
from MaxText.config.errors import ConfigError
from MaxText.config.loader import coerce, defaults
from MaxText.config.paths import check_exists
from MaxText.config.saved_files import saved_model_keys
from MaxText.config.views import MODEL_KEYS

KEY = "decode_draft_parameters_path"


def draft_config(config):
  """The run's config with the draft's model keys; None without a draft. Refuses a draft whose tokenizer is
  not the model's, naming both. The same tokenizer with a differently padded vocabulary is accepted
  (speculative.in_target_width lines the two up); a different vocab_size with no tokenizer to compare is
  refused."""
  path = config.decode_draft_parameters_path
  if not path:
    return None
  check_exists(KEY, path)
  saved = saved_model_keys(path)
  if saved is None:
    raise ConfigError(f"{KEY}: no model_config.json in {path!r} and no run config.json two levels up (its model keys)")
  source, keys = saved
  base = defaults()
  model = {k: coerce(k, keys[k], base[k]) for k in MODEL_KEYS if k in keys and k != "scan_layers"}
  draft = dataclasses.replace(config, **model)
  ours, theirs = _tokenizer_id(config.tokenizer_type, config.tokenizer_path), _draft_tokenizer(keys, path)
  if theirs is not None and theirs != ours:
    raise ConfigError(
      f"{KEY}: the draft's tokenizer ({theirs[:48]}) is not the model's ({ours[:48]}); speculative decoding "
      "needs one tokenizer"
    )
  if draft.vocab_size != config.vocab_size and theirs is None:  # a padded vocabulary needs the tokenizer named
    raise ConfigError(
      f"{KEY}: the draft's vocab_size {draft.vocab_size} ({source}) is not the model's {config.vocab_size} and "
      "its tokenizer is not saved beside it; a draft must share the model's tokenizer (save its tokenizer.json "
      "in its folder, or name it by tokenizer_type/tokenizer_path in its config)"
    )
  return draft


def _draft_tokenizer(keys: dict, path: str) -> str | None:
  """The draft's tokenizer: the files saved in its folder, else the tokenizer its config names; None if neither."""
  own = storage.join(storage.absolute(path), "tokenizer.json")
  if storage.isfile(own):
    return _tokenizer_id("huggingface", own)
  if keys.get("tokenizer_type") and (
    keys["tokenizer_type"] == "byte" or storage.exists(keys.get("tokenizer_path", ""))
  ):
    return _tokenizer_id(keys["tokenizer_type"], keys.get("tokenizer_path", ""))
  return None


def _tokenizer_id(kind: str, path: str) -> str:
  """The tokenizer type and the sha256 of its file (a folder's tokenizer.json), or 'byte'."""
  if kind == "byte":
    return "byte"
  if storage.isdir(path):
    path = storage.join(path, "tokenizer.json")
  if not storage.isfile(path):
    return f"{kind}:{path}"
  with storage.open_file(path, "rb") as f:
    return f"{kind}:sha256:{hashlib.sha256(f.read()).hexdigest()}"
