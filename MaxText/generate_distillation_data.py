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

`generation_self_instruct=true` needs no data set: the teacher writes the prompts too (the Magpie method).
Given only its chat template's text up to a user turn's content (`generation_system_prompt` as the system
turn if set, and the conversations keep it), it samples `generation_num_instructions`
user instructions (`generation_instruction_temperature`, `_top_p`, `_max_tokens`); an instruction is kept
when it ended its turn, has `generation_instruction_min_words` words and is not a near-duplicate of one kept
before on this host (`generation_dedup_threshold`, see inference/self_instruct.py); the teacher then answers
each kept one with the `decode_*` settings, and a conversation is kept when the answer ended its turn too.
A hash of the instruction sends `generation_heldout_fraction` of them to `heldout-<host>-<n>.parquet`
beside the training shards. Hosts share the instructions and resume like the answer job; the manifest
counts what each filter dropped.
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
from MaxText.inference import rationales  # noqa: E402
from MaxText.training import preflight  # noqa: E402

OUTPUT_FILES = ("part-*.parquet", "heldout-*.parquet", "progress-*.json", "manifest.json", "*.tmp")


SELF_INSTRUCT_KEYS = (
  "generation_num_instructions",
  "generation_system_prompt",
  "generation_instruction_temperature",
  "generation_instruction_top_p",
  "generation_instruction_max_tokens",
  "generation_instruction_min_words",
  "generation_dedup_threshold",
  "generation_heldout_fraction",
)


def load_config(argv: list[str]):
  first = config_lib.load(argv)
  if not first.load_parameters_path:
    raise config_lib.ConfigError("load_parameters_path: the teacher that answers the prompts must be given")
  if not first.generation_output_dir:
    raise config_lib.ConfigError("generation_output_dir: the folder the conversations are written to must be given")
  if first.generation_rationale_template and first.generation_self_instruct:
    raise config_lib.ConfigError("generation_rationale_template: the answer job's mode (not with self-instruct)")
  if first.generation_rationale_template and "{prompt}" not in first.generation_rationale_template:
    raise config_lib.ConfigError("generation_rationale_template: must hold {prompt}, where the question goes")
  if first.generation_self_instruct:
    if first.generation_num_instructions < 1:
      raise config_lib.ConfigError("generation_num_instructions: self-instruct needs how many instructions to sample")
  elif first.dataset_type not in ("jsonl", "parquet"):
    raise config_lib.ConfigError(f"dataset_type: prompts are read from jsonl or parquet, got {first.dataset_type}")
  check_output_folder("generation_output_dir", first.generation_output_dir, OUTPUT_FILES)
  config = with_saved_model_keys(argv, first)
  if config.generation_self_instruct and config.tokenizer_type != "huggingface":
    raise config_lib.ConfigError("tokenizer_type: self-instruct needs a huggingface tokenizer with a chat_template")
  return config


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

  if config.generation_self_instruct:
    prompts = {"self_instruct": {k: getattr(config, k) for k in SELF_INSTRUCT_KEYS}}
  else:
    prompts = {"dataset": [storage.absolute(p) for p in expand_paths(config.dataset_path)]}
  if config.generation_rationale_template:
    prompts["rationale"] = [config.generation_rationale_template, config.generation_answer_marker]
  return {
    "teacher": storage.absolute(config.load_parameters_path),
    **prompts,
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


def _write_shard(path: str, records: list[dict], extra_columns: tuple[str, ...] = ()) -> None:
  """One Parquet file, its schema explicit so that a shard whose prompts were all skipped still has it;
  `extra_columns`: more conversation columns (the rationale tasks)."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  conversation = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
  fields = [("messages", conversation), ("prompt_index", pa.int64()), ("sample", pa.int64()), ("stopped", pa.bool_())]
  schema = pa.schema(fields + [(name, conversation) for name in extra_columns])
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


class AnswerShards:
  """The answer job's shards: this host's prompts of the data set, `generation_prompts_per_shard` each."""

  def __init__(self, config, models: dict):
    import jax

    from MaxText.data import sft
    from MaxText.data.input_pipeline import expand_paths

    conversations = sft.read_conversations(config, expand_paths(config.dataset_path))
    self.prompts = [(i, prompt_of(c)) for i, c in enumerate(conversations)][jax.process_index() :: jax.process_count()]
    self.original = dict(self.prompts)
    self.config, self.models = config, models
    self.count = -(-len(self.prompts) // config.generation_prompts_per_shard)

  def write(self, directory: str, shard: int, key) -> dict:
    import jax

    per_shard, m, c = self.config.generation_prompts_per_shard, self.models, self.config
    chunk = self.prompts[shard * per_shard : (shard + 1) * per_shard]
    if c.generation_rationale_template:
      chunk = [(i, rationales.ask_for_rationale(p, c.generation_rationale_template)) for i, p in chunk]
    records, skipped = answer(c, m["generator"], m["tokenizer"], m["template"], chunk, key)
    name = f"part-{jax.process_index()}-{shard:05d}.parquet"
    entry = {"file": name, "skipped_long_prompts": skipped}
    if c.generation_rationale_template:
      records, no_answer = self._with_tasks(records)
      entry["dropped"] = {"no_answer": no_answer}
    _write_shard(storage.join(directory, name), records, rationales.COLUMNS if c.generation_rationale_template else ())
    return entry | {"records": len(records)}

  def _with_tasks(self, records: list[dict]) -> tuple[list[dict], int]:
    """The records whose response holds an answer, with the two task columns (and the original question)."""
    kept = []
    for record in records:
      prompt = self.original[record["prompt_index"]]
      tasks = rationales.task_columns(prompt, record["messages"][-1]["content"], self.config.generation_answer_marker)
      if tasks is not None:
        kept.append(record | tasks | {"messages": [*prompt, record["messages"][-1]]})
    return kept, len(records) - len(kept)


class SelfInstructShards:
  """Self-instruct shards: this host's share of `generation_num_instructions` candidates, sampled from the
  template's user header, filtered, answered, split into training and held-out files."""

  def __init__(self, config, models: dict, done: list[dict]):
    import jax

    from MaxText.inference import runner, self_instruct
    from MaxText.inference.sampling import Sampling

    self.config, self.models = config, models
    self.host, self.hosts = jax.process_index(), jax.process_count()
    self.candidates = len(range(self.host, config.generation_num_instructions, self.hosts))
    self.count = -(-self.candidates // config.generation_prompts_per_shard)
    self.opening = self_instruct.opening(config.generation_system_prompt)
    header = self_instruct.user_header(*models["template"], config.generation_system_prompt)
    self.header_ids = models["tokenizer"].encode(header)
    top_p = config.generation_instruction_top_p
    sampling = Sampling("nucleus" if top_p < 1.0 else "weighted", config.generation_instruction_temperature, 0, top_p)
    generator = models["generator"]
    self.instruct = runner.BatchGenerator(
      config, models["graphdef"], generator.params, generator.rows, generator.stops, generator.pad_id,
      new_tokens=config.generation_instruction_max_tokens, sampling=sampling, draft=generator.draft,
    )  # fmt: skip
    self.seen = self_instruct.NearDuplicates(config.generation_dedup_threshold)
    for entry in done:  # a resumed job remembers the instructions its finished shards kept
      for text in entry["instructions"]:
        self.seen.add(text)

  def _instructions(self, shard: int, key, dropped) -> list[tuple[int, str]]:
    """(global candidate index, instruction) of the candidates of `shard` that pass the filters."""
    import jax

    from MaxText.inference import self_instruct

    per_shard, rows, c = self.config.generation_prompts_per_shard, self.instruct.rows, self.config
    local = list(range(shard * per_shard, min((shard + 1) * per_shard, self.candidates)))
    kept = []
    for start in range(0, len(local), rows):
      batch = local[start : start + rows]
      outputs = self.instruct([self.header_ids] * len(batch), jax.random.fold_in(key, start))
      for index, (ids, stopped) in zip(batch, outputs, strict=True):
        text = self.models["tokenizer"].decode([t for t in ids if t not in self.instruct.stops]).strip()
        verdict = self_instruct.instruction_verdict(text, stopped, c.generation_instruction_min_words, self.seen)
        if verdict:
          setattr(dropped, verdict, getattr(dropped, verdict) + 1)
        else:
          kept.append((self.host + self.hosts * index, text))
    return kept

  def write(self, directory: str, shard: int, key) -> dict:
    import dataclasses

    import jax

    from MaxText.inference import self_instruct

    m, dropped = self.models, self_instruct.Dropped()
    instruct_key, answer_key = jax.random.split(key)
    kept = self._instructions(shard, instruct_key, dropped)
    prompts = [(index, [*self.opening, {"role": "user", "content": text}]) for index, text in kept]
    records, skipped = answer(self.config, m["generator"], m["tokenizer"], m["template"], prompts, answer_key)
    dropped.answer_not_stopped = sum(not r["stopped"] for r in records)
    finished = [r for r in records if r["stopped"]]
    fraction = self.config.generation_heldout_fraction
    heldout = [r for r in finished if self_instruct.is_heldout(r["messages"][-2]["content"], fraction)]
    train = [r for r in finished if not self_instruct.is_heldout(r["messages"][-2]["content"], fraction)]
    entry = {"file": f"part-{self.host}-{shard:05d}.parquet", "records": len(train), "skipped_long_prompts": skipped}
    _write_shard(storage.join(directory, entry["file"]), train)
    if fraction > 0:
      entry |= {"heldout_file": f"heldout-{self.host}-{shard:05d}.parquet", "heldout_records": len(heldout)}
      _write_shard(storage.join(directory, entry["heldout_file"]), heldout)
    # the instructions the filters kept (answered or not): what a resumed job's near-duplicate filter remembers
    return entry | {"dropped": dataclasses.asdict(dropped), "instructions": [text for _, text in kept]}


def _load_models(config) -> dict:
  """The tokenizer, chat template, mesh, teacher parameters and the answers' batch generator."""
  from MaxText.data import chat
  from MaxText.data.tokenizer import build_tokenizer, check_fits_model
  from MaxText.inference import runner
  from MaxText.model import decoder
  from MaxText.model.params_io import load_params
  from MaxText.parallel import sharding
  from MaxText.training.runtime import global_batch_size

  tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_path)
  check_fits_model(tokenizer, config.vocab_size)
  template = chat.read_chat_template(config.tokenizer_path)
  mesh = sharding.create_mesh(config)
  graphdef, abstract, axes = decoder.split_params(decoder.abstract_model(config))
  params = load_params(config.load_parameters_path, abstract, sharding.logical_shardings(axes, abstract, mesh))
  rows, stops = global_batch_size(config), runner.stop_ids(config, tokenizer)
  pad_id, draft = getattr(tokenizer, "pad_id", 0), runner.load_draft(config, mesh)  # speculative: the same answers
  generator = runner.BatchGenerator(config, graphdef, params, rows, stops, pad_id, draft=draft)
  return {"tokenizer": tokenizer, "template": template, "mesh": mesh, "graphdef": graphdef, "generator": generator}


def run(config) -> dict:
  import time

  import jax

  from MaxText.inference.runner import speed_report

  directory = config.generation_output_dir
  spec = job_spec(config)
  progress = _progress(directory, spec)
  models = _load_models(config)
  if config.generation_self_instruct:
    shards = SelfInstructShards(config, models, progress["shards"])
  else:
    shards = AnswerShards(config, models)
  storage.makedirs(directory)  # only now: a job refused above (its teacher, template or prompts) leaves no folder
  host_key = jax.random.fold_in(jax.random.key(config.seed), jax.process_index())
  first, started = len(progress["shards"]), time.perf_counter()
  with jax.set_mesh(models["mesh"]):
    for shard in range(first, shards.count):
      entry = shards.write(directory, shard, jax.random.fold_in(host_key, shard))
      progress["shards"].append(entry)
      _write_json(storage.join(directory, f"progress-{jax.process_index()}.json"), progress)
      _print_progress(shard + 1 - first, shards.count - first, shard + 1, shards.count, entry, started)
  if models["generator"].draft is not None and jax.process_index() == 0:  # the answers' rounds, compiles included
    print(speed_report(models["generator"].stats, time.perf_counter() - started), flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("generation shards written")
  return _manifest(directory, spec) if jax.process_index() == 0 else spec


def _print_progress(done: int, todo: int, shard: int, shards: int, entry: dict, started: float) -> None:
  import time

  import jax

  if jax.process_index() != 0:
    return
  elapsed = time.perf_counter() - started
  held = f" + {entry['heldout_records']} held out" if "heldout_records" in entry else ""
  counts = {**entry.get("dropped", {}), "prompt_too_long": entry["skipped_long_prompts"]}
  dropped = "".join(f", {v} {k.replace('_', ' ')}" for k, v in counts.items() if v)
  eta = elapsed / done * (todo - done)
  print(f"shard {shard}/{shards}: {entry['records']} conversations{held}{dropped} | ETA {eta:,.0f}s", flush=True)


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
  if spec.get("self_instruct"):
    manifest["heldout_shards"] = [s["heldout_file"] for s in shards if "heldout_file" in s]
    manifest["heldout_records"] = sum(s.get("heldout_records", 0) for s in shards)
  if shards and "dropped" in shards[0]:  # self-instruct's filters, the rationale mode's responses without answer
    manifest["dropped"] = {k: sum(s["dropped"][k] for s in shards) for k in shards[0]["dropped"]}
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
