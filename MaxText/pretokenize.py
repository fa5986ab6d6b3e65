"""Tokenizes a text / JSONL / Parquet data set once into ArrayRecord shards that training reads lazily.

  python -m MaxText.pretokenize base.yml dataset_type=jsonl dataset_path='data/*.jsonl' \
      tokenizer_type=huggingface tokenizer_path=TOK pretokenize_output_dir=OUT [pretokenize_documents_per_shard=N]
  python -m MaxText.train base.yml dataset_type=arrayrecord dataset_path='OUT/part-*.array_record' ...

One record per document: its token ids as int32 bytes, with BOS/EOS as add_bos/add_eos say, exactly what
the training pipeline would make of it. Each process of a multi-host job (jax_distributed_initialize)
tokenizes its share of the files (data/documents.py) into `part-<process>-<shard>.array_record`; process 0
writes `manifest.json` (documents, tokens, shards, tokenizer) when all are done. Written to a gs:// folder,
each shard is uploaded whole when it is complete. (A rerun starts over: the folder must be empty or hold
only this job's files.)
"""

from __future__ import annotations

import json
import os
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only the config's modules here: the functions that run the job import the rest, once the config is good.
from MaxText import config as config_lib  # noqa: E402
from MaxText.config import storage  # noqa: E402
from MaxText.config.paths import check_output_folder  # noqa: E402
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402

OUTPUT_FILES = ("part-*.array_record", "shards-*.json", "manifest.json", "*.tmp")
_BATCH = 512  # documents tokenized per call (a Hugging Face tokenizer encodes a batch in parallel)


def load_config(argv: list[str]):
  config = config_lib.load(argv)
  if not config.pretokenize_output_dir:
    raise config_lib.ConfigError("pretokenize_output_dir: required (the folder the shards are written to)")
  if config.dataset_type not in ("text", "jsonl", "parquet", "arrow"):
    raise config_lib.ConfigError(
      f"dataset_type: pretokenize reads text, jsonl, parquet or arrow, got {config.dataset_type!r}"
    )
  if config.use_sft:
    raise config_lib.ConfigError("use_sft: conversations are rendered with their loss masks at training time")
  check_output_folder("pretokenize_output_dir", config.pretokenize_output_dir, OUTPUT_FILES)
  return config


def _write_shard(path: str, token_arrays: list) -> int:
  import numpy as np
  from array_record.python.array_record_module import ArrayRecordWriter

  staging = storage.LocalStaging(path)  # ArrayRecord writes local files; a bucket gets the finished shard
  writer = ArrayRecordWriter(staging.local, "group_size:1")
  for tokens in token_arrays:
    writer.write(tokens.astype(np.int32).tobytes())
  writer.close()
  staging.commit()
  return sum(len(t) for t in token_arrays)


def tokenize_share(config) -> list[dict]:
  """This process's documents, tokenized into shards; the shards' records."""
  import jax

  from MaxText.data import input_pipeline
  from MaxText.data.tokenizer import build_tokenizer, encode_documents

  tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_path)
  docs = input_pipeline.open_documents(config, jax.process_index(), jax.process_count())
  stride, offset = docs.host_stride
  mine = range(offset, len(docs), stride)
  out, per_shard = config.pretokenize_output_dir, config.pretokenize_documents_per_shard
  shards = []
  for start in range(0, len(mine), per_shard):
    indices = mine[start : start + per_shard]
    tokens = []
    for first in range(0, len(indices), _BATCH):
      texts = [docs[i] for i in indices[first : first + _BATCH]]
      tokens += encode_documents(tokenizer, texts, config.add_bos, config.add_eos)
    name = f"part-{jax.process_index():05d}-{len(shards):05d}.array_record"
    count = _write_shard(storage.join(out, name), tokens)
    shards.append({"file": name, "process": jax.process_index(), "documents": len(tokens), "tokens": count})
  return shards


def _shards_file(out: str, process: int) -> str:
  return storage.join(out, f"shards-{process:05d}.json")


def pretokenize(config) -> dict | None:
  import jax

  from MaxText.data import teacher_cache

  storage.makedirs(config.pretokenize_output_dir)
  started = time.perf_counter()
  out = config.pretokenize_output_dir
  shards = tokenize_share(config)
  storage.write_text_atomic(_shards_file(out, jax.process_index()), json.dumps(shards))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("pretokenize shards written")
  if jax.process_index() != 0:
    return None
  shards = [s for p in range(jax.process_count()) for s in json.loads(storage.read_text(_shards_file(out, p)))]
  manifest = {
    "documents": sum(s["documents"] for s in shards),
    "tokens": sum(s["tokens"] for s in shards),
    "shards": sorted(shards, key=lambda s: s["file"]),
    "tokenizer_fingerprint": teacher_cache.tokenizer_fingerprint(config),
    "data": {k: getattr(config, k) for k in ("dataset_type", "dataset_path", "data_column", "add_bos", "add_eos")},
  }
  storage.write_text_atomic(storage.join(out, "manifest.json"), json.dumps(manifest, indent=1))
  seconds = time.perf_counter() - started
  print(
    f"pretokenized {manifest['documents']:,} documents, {manifest['tokens']:,} tokens into "
    f"{len(manifest['shards'])} shard(s) in {config.pretokenize_output_dir} ({seconds:.1f} s)",
    flush=True,
  )
  return manifest


def main(argv: list[str]) -> int:
  default_to_cpu_without_accelerator()
  try:
    config = load_config(argv[1:])
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  from MaxText.training.runtime import maybe_initialize_distributed

  maybe_initialize_distributed(config)
  try:
    pretokenize(config)
  except config_lib.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
