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

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only the config's modules here: the generation stack is imported once the config and files are good.
from MaxText import config as config_lib  # noqa: E402
from MaxText.config import storage  # noqa: E402
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402
from MaxText.config.saved_files import with_saved_model_keys  # noqa: E402
from MaxText.data import chat  # noqa: E402
from MaxText.training import preflight  # noqa: E402


def load_config(argv: list[str]):
  first = config_lib.load(argv)
  if not first.load_parameters_path:
    raise config_lib.ConfigError("load_parameters_path: the model to generate with must be given (a checkpoint folder)")
  if first.decode_input_path and not storage.isfile(first.decode_input_path):
    raise config_lib.ConfigError(
      f"decode_input_path: {first.decode_input_path!r} is not a file (expected JSONL of prompts, one per line)"
    )
  if first.decode_output_path and storage.exists(first.decode_output_path):
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
  with storage.open_file(config.decode_input_path, encoding="utf-8") as f:
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
  from MaxText.inference import runner

  template = runner.template_of(config, prompts)
  encoded = []
  for index, record in enumerate(prompts):
    ids = runner.encode_prompt(config, tokenizer, template, record)
    if not 1 <= len(ids) <= config.max_prefill_predict_length:
      raise config_lib.ConfigError(
        f"max_prefill_predict_length: prompt {index} has {len(ids)} tokens "
        f"(allowed 1..{config.max_prefill_predict_length})"
      )
    encoded.append(ids)
  return encoded


def run(config) -> list[dict]:
  """Generates for every prompt; returns (and writes, with decode_output_path) one record per prompt."""
  import jax

  from MaxText.data.tokenizer import build_tokenizer, check_fits_model
  from MaxText.inference import runner
  from MaxText.model import decoder
  from MaxText.model.params_io import load_params
  from MaxText.parallel import sharding
  from MaxText.training.runtime import global_batch_size

  tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_path)
  check_fits_model(tokenizer, config.vocab_size)
  prompts = read_prompts(config)
  encoded = encode_prompts(config, tokenizer, prompts)
  mesh = sharding.create_mesh(config)
  graphdef, abstract, axes = decoder.split_params(decoder.abstract_model(config))
  params = load_params(config.load_parameters_path, abstract, sharding.logical_shardings(axes, abstract, mesh))
  rows, stops = global_batch_size(config), runner.stop_ids(config, tokenizer)
  pad_id = getattr(tokenizer, "pad_id", 0)
  draft = runner.load_draft(config, mesh)
  generator = runner.BatchGenerator(config, graphdef, params, rows, stops, pad_id, draft=draft)
  with jax.set_mesh(mesh):
    records, seconds = _generate_all(config, generator, tokenizer, prompts, encoded, rows, stops)
    if draft is not None:
      report = runner.speed_report(generator.stats, seconds)
      if config.decode_compare_plain:
        plain = runner.BatchGenerator(config, graphdef, params, rows, stops, pad_id)
        plain_records, plain_seconds = _generate_all(config, plain, tokenizer, prompts, encoded, rows, stops)
        plain_tokens = sum(len(r["completion_ids"]) for r in plain_records)
        report += f"; plain decode {plain_tokens / plain_seconds:,.1f} tokens/s"
      print(report)
  if config.decode_output_path:
    with storage.open_file(config.decode_output_path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  return records


def _generate_all(config, generator, tokenizer, prompts, encoded, rows, stops) -> tuple[list[dict], float]:
  """Records of every prompt and the seconds their generation took after the first batch's compile."""
  import time

  import jax

  records, key, started = [], jax.random.key(config.seed), None
  for start in range(0, len(encoded), rows):
    key, subkey = jax.random.split(key)
    if started is None:  # compile once on the first batch, outside the clock and the counts
      generator(encoded[start : start + rows], subkey)
      generator.stats = dict.fromkeys(generator.stats, 0)
      started = time.perf_counter()
    outputs = generator(encoded[start : start + rows], subkey)
    for prompt, (ids, _) in zip(prompts[start : start + rows], outputs, strict=True):
      completion = tokenizer.decode([t for t in ids if t not in stops])
      records.append({**prompt, "completion": completion, "completion_ids": ids})
  return records, time.perf_counter() - started


def main(argv: list[str]) -> int:
  default_to_cpu_without_accelerator()
  config_lib.silence_async_leftovers()  # a damaged checkpoint's sibling reads, after its one-line error
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
