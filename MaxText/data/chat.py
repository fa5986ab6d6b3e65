"""Chat templates: `messages` rendered into the text a chat model was trained on.

The template is the Jinja `chat_template` of the tokenizer's `tokenizer_config.json` (what
`convert_hf_checkpoint.py` copies and writes for HF and GGUF models), rendered the way Hugging Face
renders it: a sandboxed environment with trimmed blocks, loop controls, `raise_exception` and `tojson`,
the special tokens of tokenizer_config.json as variables. The rendered text is then tokenized without
adding special tokens (the template writes them), as `apply_chat_template` does.
"""

from __future__ import annotations

import functools
import json

from MaxText.config import storage
from MaxText.config.errors import BadInputError, MissingFileError

ROLES = ("system", "user", "assistant")


def read_chat_template(tokenizer_path: str) -> tuple[str, dict[str, str]]:
  """(template, special tokens by name) from the tokenizer folder's tokenizer_config.json."""
  folder = tokenizer_path if storage.isdir(tokenizer_path) else storage.dirname(tokenizer_path)
  path = storage.join(folder, "tokenizer_config.json")
  if not storage.isfile(path):
    raise MissingFileError(f"tokenizer_path: no tokenizer_config.json (with a chat_template) in {folder!r}")
  with storage.open_file(path, encoding="utf-8") as f:
    raw = json.load(f)
  template = raw.get("chat_template")
  if isinstance(template, list):  # several named templates: the default one
    template = next((t["template"] for t in template if t.get("name") == "default"), None)
  if not isinstance(template, str):
    raise BadInputError(f"tokenizer_path: {path!r} has no chat_template; this tokenizer cannot render messages")
  specials = {}
  for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
    value = raw.get(key)
    value = value.get("content") if isinstance(value, dict) else value
    if isinstance(value, str):
      specials[key] = value
  return template, specials


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
  from jinja2.ext import loopcontrols
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise BadInputError(f"chat template: {message}")

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
  env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
  env.globals["raise_exception"] = raise_exception
  return env.from_string(template)


def check_messages(messages, where: str) -> list[dict]:
  """A list of {role, content} with known roles, or a one-line error naming `where`."""
  if not isinstance(messages, list) or not messages:
    raise BadInputError(f"{where}: messages must be a non-empty list of {{role, content}}")
  for i, message in enumerate(messages):
    if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
      raise BadInputError(
        f"{where}: message {i} must be {{role: one of {', '.join(ROLES)}, content: text}}, got {message!r}"
      )
  return messages


def render(template: str, specials: dict[str, str], messages: list[dict], add_generation_prompt: bool) -> str:
  return _compiled(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **specials)
