"""Generates text from a model: prefill + KV-cached decode, batched and jitted on the training mesh.

  python -m MaxText.decode base.yml load_parameters_path=CKPT [tokenizer_path=...] prompt="I love to" \
      [decode_use_chat_template=true] [decode_input_path=prompts.jsonl decode_output_path=out.jsonl] \
      [decode_max_new_tokens=64 decode_sampling_strategy=nucleus decode_sampling_nucleus_p=0.9 ...]

The model and tokenizer keys come from what is saved beside `load_parameters_path` (a run's checkpoint
step folder, a converted Hugging Face or GGUF folder, a pruned student), as for prune_student.py.
Prompts: `prompt`, or one JSON object per line of `decode_input_path` with a `prompt` (text) or
`messages` (a conversation rendered with the tokenizer's chat template, ending in the generation prompt).
Prompts of different lengths share a batch of `per_device_batch_size` x devices rows.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText import config as config_lib  # noqa: E402
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402
from MaxText.data import chat  # noqa: E402
from MaxText.data.tokenizer import build_tokenizer, check_fits_model  # noqa: E402
from MaxText.inference.generate import generate  # noqa: E402
from MaxText.inference.sampling import Sampling  # noqa: E402
from MaxText.model import decoder  # noqa: E402
from MaxText.model.params_io import load_params  # noqa: E402
from MaxText.parallel import sharding  # noqa: E402
from MaxText.training import preflight  # noqa: E402
from MaxText.training.runtime import global_batch_size, with_saved_model_keys  # noqa: E402


def load_config(argv: list[str]):
  first = config_lib.load(argv)
  if not first.load_parameters_path:
    raise config_lib.ConfigError("load_parameters_path: the model to generate with must be given (a checkpoint folder)")
  if first.decode_output_path and os.path.exists(first.decode_output_path):
    raise config_lib.ConfigError(
      f"decode_output_path: {first.decode_output_path!r} exists; name a new file (nothing was written)"
    )
  return with_saved_model_keys(argv, first)


def read_prompts(config) -> list[dict]:
  """[{"prompt": text} or {"messages": [...]}] from decode_input_path, or the one `prompt`."""
  if not config.decode_input_path:
    if config.decode_use_chat_template:
      return [{"messages": [{"role": "user", "content": config.prompt}]}]
    return [{"prompt": config.prompt}]
  prompts = []
  with open(config.decode_input_path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"decode_input_path: {config.decode_input_path!r} line {number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise config_lib.ConfigError(f"{where} is not JSON ({e.msg})") from None
      if not isinstance(record, dict) or not ({"prompt", "messages"} & set(record)):
        raise config_lib.ConfigError(f"{where}: expected an object with 'prompt' or 'messages'")
      if "messages" in record:
        chat.check_messages(record["messages"], where)
      prompts.append(record)
  if not prompts:
    raise config_lib.ConfigError(f"decode_input_path: {config.decode_input_path!r} holds no prompts")
  return prompts


def encode_prompts(config, tokenizer, prompts: list[dict]) -> list[list[int]]:
  """Token ids of each prompt: chat-rendered messages as they are, plain text after the BOS token."""
  template = None
  encoded = []
  for index, record in enumerate(prompts):
    if "messages" in record:
      template = template or chat.read_chat_template(config.tokenizer_path)
      ids = tokenizer.encode(chat.render(*template, record["messages"], add_generation_prompt=True))
    else:
      bos = [tokenizer.bos_id] if config.add_bos and tokenizer.bos_id is not None else []
      ids = bos + tokenizer.encode(record["prompt"])
    if not 1 <= len(ids) <= config.max_prefill_predict_length:
      raise config_lib.ConfigError(
        f"max_prefill_predict_length: prompt {index} has {len(ids)} tokens "
        f"(allowed 1..{config.max_prefill_predict_length})"
      )
    encoded.append(ids)
  return encoded


def stop_ids(config, tokenizer) -> tuple[int, ...]:
  listed = tuple(int(t) for t in config.decode_stop_tokens.split(",") if t.strip())
  return listed or ((tokenizer.eos_id,) if tokenizer.eos_id is not None else ())


def _padded(batch: list[list[int]], rows: int, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """[rows, length] right-padded prompts and their lengths (missing rows repeat the first prompt)."""
  batch = batch + [batch[0]] * (rows - len(batch))
  tokens = np.full((rows, length), pad_id, np.int32)
  for row, ids in enumerate(batch):
    tokens[row, : len(ids)] = ids
  return tokens, np.asarray([len(ids) for ids in batch], np.int32)


def run(config) -> list[dict]:
  """Generates for every prompt; returns (and writes, with decode_output_path) one record per prompt."""
  tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_path)
  check_fits_model(tokenizer, config.vocab_size)
  prompts = read_prompts(config)
  encoded = encode_prompts(config, tokenizer, prompts)
  mesh = sharding.create_mesh(config)
  graphdef, abstract, axes = decoder.split_params(decoder.abstract_model(config))
  params = load_params(config.load_parameters_path, abstract, sharding.logical_shardings(axes, abstract, mesh))
  rows, pad_id = global_batch_size(config), getattr(tokenizer, "pad_id", 0)
  stops, sampling = stop_ids(config, tokenizer), Sampling.from_config(config)

  @jax.jit
  def generate_batch(params, tokens, lengths, key):
    model = decoder.bind(graphdef, params)
    return generate(model, tokens, lengths, key, sampling, config.decode_max_new_tokens, stops, pad_id)

  records, key = [], jax.random.key(config.seed)
  longest = max(len(ids) for ids in encoded)
  with jax.set_mesh(mesh):
    for start in range(0, len(encoded), rows):
      tokens, lengths = _padded(encoded[start : start + rows], rows, longest, pad_id)
      key, subkey = jax.random.split(key)
      out = generate_batch(params, jnp.asarray(tokens), jnp.asarray(lengths), subkey)
      generated, counts = np.asarray(out.tokens_BxN), np.asarray(out.lengths_B)
      for row, prompt in enumerate(prompts[start : start + rows]):
        ids = generated[row, : counts[row]].tolist()
        completion = tokenizer.decode([t for t in ids if t not in stops])
        records.append({**prompt, "completion": completion, "completion_ids": ids})
  if config.decode_output_path:
    with open(config.decode_output_path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  return records


def main(argv: list[str]) -> int:
  default_to_cpu_without_accelerator()
  try:
    config = load_config(argv[1:])
    preflight.run(config)
    records = run(config)
  except config_lib.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2 if isinstance(e, config_lib.ConfigError) else 1
  for record in records:
    shown = record.get("prompt") or record["messages"][-1]["content"]
    print(f"> {shown}\n{record['completion']}\n")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
