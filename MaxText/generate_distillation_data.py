"""Sequence-level distillation data: the teacher answers the prompts of a data set; students are then
fine-tuned on its answers (`use_sft`).

  python -m MaxText.generate_distillation_data base.yml load_parameters_path=TEACHER \
      dataset_type=jsonl dataset_path=prompts.jsonl generation_output_dir=OUT \
      [generation_samples_per_prompt=4 decode_sampling_strategy=nucleus decode_sampling_nucleus_p=0.9 ...]
  python MaxText/train.py base.yml use_sft=true dataset_type=parquet dataset_path='OUT/part-*.parquet' ...

Each record's `train_data_columns` (default `messages`) is a conversation; its trailing assistant turns
are dropped and the rest is the prompt. The teacher generates
`generation_samples_per_prompt` answers per prompt with the `decode_*` settings; prompts longer than
`max_prefill_predict_length` tokens are skipped and counted. Each host takes every process_count-th
prompt and writes Parquet shards `part-<host>-<n>.parquet` of `generation_prompts_per_shard` prompts
with `progress-<host>.json`; a rerun keeps finished shards and continues (each shard's random key is
derived from `seed`, the host and the shard, so a resumed job writes what an uninterrupted one would).
Process 0 writes `manifest.json` at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only the config's modules here: the functions that run the job import the JAX stack, once the config and
# its files are known to be good (a config error returns without it).
from MaxText import config as config_lib  # noqa: E402
from MaxText.config import storage  # noqa: E402
from MaxText.config.paths import check_output_folder  # noqa: E402
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402
from MaxText.config.saved_files import with_saved_model_keys  # noqa: E402
from MaxText.training import preflight  # noqa: E402

OUTPUT_FILES = ("part-*.parquet", "progress-*.json", "manifest.json", "*.tmp")


def load_config(argv: list[str]):
  first = config_lib.load(argv)
  if not first.load_parameters_path:
    raise config_lib.ConfigError("load_parameters_path: the teacher that answers the prompts must be given")
  if not first.generation_output_dir:
    raise config_lib.ConfigError("generation_output_dir: the folder the conversations are written to must be given")
  if first.dataset_type not in ("jsonl", "parquet"):
    raise config_lib.ConfigError(f"dataset_type: prompts are read from jsonl or parquet, got {first.dataset_type}")
  check_output_folder("generation_output_dir", first.generation_output_dir, OUTPUT_FILES)
  return with_saved_model_keys(argv, first)


def prompt_of(conversation: list[dict]) -> list[dict]:
  """The conversation without its trailing assistant turns."""
  messages = list(conversation)
  while messages and messages[-1]["role"] == "assistant":
    messages.pop()
  return messages


def job_spec(config) -> dict:
  """What fixes the output; a resumed job must match it."""
  import jax

  from MaxText.data.input_pipeline import expand_paths
  from MaxText.inference.sampling import Sampling

  return {
    "teacher": storage.absolute(config.load_parameters_path),
    "dataset": [storage.absolute(p) for p in expand_paths(config.dataset_path)],
    "samples_per_prompt": config.generation_samples_per_prompt,
    "prompts_per_shard": config.generation_prompts_per_shard,
    "sampling": dataclasses.asdict(Sampling.from_config(config)) | {"max_new_tokens": config.decode_max_new_tokens},
    "seed": config.seed,
    "process_count": jax.process_count(),
  }


def _progress(directory: str, spec: dict) -> dict:
  import jax

  path = storage.join(directory, f"progress-{jax.process_index()}.json")
  if not storage.isfile(path):
    return {"spec": spec, "shards": []}
  with storage.open_file(path, encoding="utf-8") as f:
    progress = json.load(f)
  if progress.get("spec") != spec:
    raise config_lib.ConfigError(
      f"generation_output_dir: {directory!r} was written with other settings; use a new folder (nothing was changed)"
    )
  return progress


def _write_json(path: str, value) -> None:
  storage.write_text_atomic(path, json.dumps(value, indent=1))


def _write_shard(path: str, records: list[dict]) -> None:
  """One Parquet file, its schema explicit so that a shard whose prompts were all skipped still has it."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  message = pa.struct([("role", pa.string()), ("content", pa.string())])
  schema = pa.schema(
    [("messages", pa.list_(message)), ("prompt_index", pa.int64()), ("sample", pa.int64()), ("stopped", pa.bool_())]
  )
  staging = storage.LocalStaging(path)
  pq.write_table(pa.Table.from_pylist(records, schema=schema), staging.local)
  staging.commit()


def answer(config, generator, tokenizer, template, prompts: list[tuple[int, list[dict]]], key):
  """Conversation records for (prompt index, prompt) pairs: `samples_per_prompt` answers each."""
  import jax

  from MaxText.inference import runner

  encoded = [(i, p, runner.encode_prompt(config, tokenizer, template, {"messages": p})) for i, p in prompts]
  kept = [(i, p, ids) for i, p, ids in encoded if len(ids) <= config.max_prefill_predict_length]
  jobs = [(i, p, ids, s) for i, p, ids in kept for s in range(config.generation_samples_per_prompt)]
  records = []
  for start in range(0, len(jobs), generator.rows):
    batch = jobs[start : start + generator.rows]
    outputs = generator([ids for _, _, ids, _ in batch], jax.random.fold_in(key, start))
    for (index, prompt, _, sample), (ids, stopped) in zip(batch, outputs, strict=True):
      text = tokenizer.decode([t for t in ids if t not in generator.stops])
      messages = [*prompt, {"role": "assistant", "content": text}]
      records.append({"messages": messages, "prompt_index": index, "sample": sample, "stopped": stopped})
  return records, len(encoded) - len(kept)


def run(config) -> dict:
  import jax

  from MaxText.data import chat, sft
  from MaxText.data.input_pipeline import expand_paths
  from MaxText.data.tokenizer import build_tokenizer, check_fits_model
  from MaxText.inference import runner
  from MaxText.model import decoder
  from MaxText.model.params_io import load_params
  from MaxText.parallel import sharding
  from MaxText.training.runtime import global_batch_size

  directory = config.generation_output_dir
  storage.makedirs(directory)
  tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_path)
  check_fits_model(tokenizer, config.vocab_size)
  files = expand_paths(config.dataset_path)
  conversations = sft.read_conversations(config, files)
  prompts = [(i, prompt_of(c)) for i, c in enumerate(conversations)][jax.process_index() :: jax.process_count()]
  spec = job_spec(config)
  progress = _progress(directory, spec)
  template = chat.read_chat_template(config.tokenizer_path)
  mesh = sharding.create_mesh(config)
  graphdef, abstract, axes = decoder.split_params(decoder.abstract_model(config))
  params = load_params(config.load_parameters_path, abstract, sharding.logical_shardings(axes, abstract, mesh))
  rows, stops = global_batch_size(config), runner.stop_ids(config, tokenizer)
  generator = runner.BatchGenerator(config, graphdef, params, rows, stops, getattr(tokenizer, "pad_id", 0))
  per_shard, host_key = (
    config.generation_prompts_per_shard,
    jax.random.fold_in(jax.random.key(config.seed), jax.process_index()),
  )
  with jax.set_mesh(mesh):
    for shard in range(len(progress["shards"]), -(-len(prompts) // per_shard)):
      chunk = prompts[shard * per_shard : (shard + 1) * per_shard]
      records, skipped = answer(config, generator, tokenizer, template, chunk, jax.random.fold_in(host_key, shard))
      name = f"part-{jax.process_index()}-{shard:05d}.parquet"
      _write_shard(storage.join(directory, name), records)
      progress["shards"].append({"file": name, "records": len(records), "skipped_long_prompts": skipped})
      _write_json(storage.join(directory, f"progress-{jax.process_index()}.json"), progress)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("generation shards written")
  return _manifest(directory, spec) if jax.process_index() == 0 else spec


def _manifest(directory: str, spec: dict) -> dict:
  import jax

  shards = []
  for process in range(jax.process_count()):
    with storage.open_file(storage.join(directory, f"progress-{process}.json"), encoding="utf-8") as f:
      shards += json.load(f)["shards"]
  manifest = {
    **spec,
    "shards": [s["file"] for s in shards],
    "records": sum(s["records"] for s in shards),
    "skipped_long_prompts": sum(s["skipped_long_prompts"] for s in shards),
  }
  _write_json(storage.join(directory, "manifest.json"), manifest)
  return manifest


def main(argv: list[str]) -> int:
  default_to_cpu_without_accelerator()
  config_lib.silence_async_leftovers()  # a damaged checkpoint's sibling reads, after its one-line error
  try:
    config = load_config(argv[1:])
    preflight.run(config)
    from MaxText.training.runtime import maybe_initialize_distributed

    maybe_initialize_distributed(config)
    manifest = run(config)
  except config_lib.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2 if isinstance(e, config_lib.ConfigError) else 1
  print(f"wrote {manifest.get('records', '?')} conversations to {config.generation_output_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
