"""Bad inputs to the three jobs, as a new user would give them: each ends with a non-zero exit and exactly
one line on stderr naming the key or file, no traceback, and no input file changed.

The cases run side by side (each its own process) once per session; each parametrised test reads its
result. Inputs are built here: a teacher checkpoint, an offline cache, a Hugging Face folder written
without torch, and broken copies of each.
"""

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys

import forked_jobs
import numpy as np
import pytest

from tests.conftest import REPO, free_port, xla_flags

TRAIN = [sys.executable, os.path.join(REPO, "MaxText", "train.py")]
SAVE = [sys.executable, os.path.join(REPO, "MaxText", "save_top_k_teacher_logits.py")]
CONVERT = [sys.executable, "-m", "MaxText.convert_hf_checkpoint"]
DECODE = [sys.executable, "-m", "MaxText.decode"]
BASE = ["base.yml", "model_name=tiny", "dtype=float32", "max_target_length=32", "per_device_batch_size=2", "steps=2"]
SAVE_BASE = [*BASE, "use_kd=true", "kd_offline_top_k=4", "kd_offline_logits_dtype=float32"]


def _truncate_data_files(folder: str) -> None:
  """Cuts every data file of an Orbax checkpoint to 10 bytes (a copy interrupted mid-transfer)."""
  for root, _, files in os.walk(folder):
    if os.path.basename(root) == "d":
      for name in files:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(10)


def _write(path: str, data) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb" if isinstance(data, bytes) else "w", encoding=None if isinstance(data, bytes) else "utf-8") as f:
    f.write(data)
  return path


def _hf_folder(path: str, params, config, tensors_hook=None) -> str:
  from safetensors.numpy import save_file

  from MaxText.model import hf_config, hf_weights

  tensors = {k: np.array(v, np.float32) for k, v in hf_weights.params_to_hf(params, config).items()}
  if tensors_hook is not None:
    tensors_hook(tensors)
  os.makedirs(path)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  _write(os.path.join(path, "config.json"), json.dumps(hf_config.hf_config_from(config, "float32", 1, 2, 0)))
  return path


def _build_inputs(root: str) -> dict:
  """Every input file the cases use (the 'good' ones and their broken copies)."""
  import jax
  from flax import nnx

  from MaxText import pyconfig
  from MaxText import save_top_k_teacher_logits as save_job
  from MaxText.model import decoder, params_io
  from MaxText.train_tokenizer import main as train_tokenizer

  p = {name: os.path.join(root, name) for name in ("teacher", "wide", "empty_dir", "cache", "tok")}
  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32"})
  params = jax.tree.map(np.asarray, decoder.split_params(decoder.Decoder(config, nnx.Rngs(3)))[1])
  params_io.save_params(p["teacher"], params)
  wide = pyconfig.from_dict({"model_name": "tiny", "emb_dim": 64})
  params_io.save_params(p["wide"], decoder.split_params(decoder.Decoder(wide, nnx.Rngs(0)))[1])
  p["truncated_teacher"] = os.path.join(root, "truncated_teacher")
  shutil.copytree(p["teacher"], p["truncated_teacher"])
  _truncate_data_files(p["truncated_teacher"])
  os.makedirs(p["empty_dir"])

  p["text"] = _write(os.path.join(root, "data", "good.txt"), "To be, or not to be, that is the question.\n" * 20)
  p["empty_text"] = _write(os.path.join(root, "data", "empty.txt"), "")
  p["binary"] = _write(os.path.join(root, "data", "image.bin"), bytes(range(256)) * 8)
  p["latin1"] = _write(os.path.join(root, "data", "latin1.txt"), "caf\xe9 cr\xe8me ".encode("latin-1") * 50)
  # the bad record comes first: documents are read lazily, and the first is checked when the data set opens
  # (tests/test_streaming.py has a bad record met mid-run)
  p["null_jsonl"] = _write(os.path.join(root, "data", "null.jsonl"), '{"text": null}\n{"text": "ok"}\n')
  p["nocol_jsonl"] = _write(os.path.join(root, "data", "nocol.jsonl"), '{"body": "no text field"}\n')
  p["bad_jsonl"] = _write(os.path.join(root, "data", "bad.jsonl"), '{"text": \n{"text": "ok"}\n')
  train_tokenizer(["--type", "bpe", "--vocab_size", "512", "--output", p["tok"]])
  p["tok_json"] = os.path.join(p["tok"], "tokenizer.json")

  save_job.save(
    pyconfig.initialize(
      [*SAVE_BASE, f"kd_teacher_parameters_path={p['teacher']}", f"kd_offline_output_dir={p['cache']}"]
    )
  )
  for name, damage in (("cache_cut_manifest", "manifest"), ("cache_cut_shard", "shard")):
    p[name] = os.path.join(root, name)
    shutil.copytree(p["cache"], p[name])
    victim = os.path.join(p[name], "manifest.json" if damage == "manifest" else "shard-00000-00000.array_record")
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
  p["cache_flipped"] = os.path.join(root, "cache_flipped")
  shutil.copytree(p["cache"], p["cache_flipped"])
  shard = os.path.join(p["cache_flipped"], "shard-00000-00000.array_record")
  with open(shard, "r+b") as f:  # one bit of a record's payload (same size: the size check cannot see it)
    f.seek(200)
    byte = f.read(1)
    f.seek(200)
    f.write(bytes([byte[0] ^ 0x10]))

  p["hf"] = _hf_folder(os.path.join(root, "hf"), params, config)
  p["hf_nan"] = _hf_folder(
    os.path.join(root, "hf_nan"), params, config, lambda t: t["model.norm.weight"].__setitem__(0, np.nan)
  )
  p["hf_missing"] = _hf_folder(
    os.path.join(root, "hf_missing"), params, config, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")
  )
  p["hf_cut"] = os.path.join(root, "hf_cut")
  shutil.copytree(p["hf"], p["hf_cut"])
  with open(os.path.join(p["hf_cut"], "model.safetensors"), "r+b") as f:
    f.truncate(os.path.getsize(os.path.join(p["hf"], "model.safetensors")) // 2)
  p["hf_broken_config"] = os.path.join(root, "hf_broken_config")
  shutil.copytree(p["hf"], p["hf_broken_config"])
  _write(os.path.join(p["hf_broken_config"], "config.json"), '{"architectures": ["LlamaForCausalLM"], "hidden')
  p["hf_gpt2"] = os.path.join(root, "hf_gpt2")
  shutil.copytree(p["hf"], p["hf_gpt2"])
  _write(os.path.join(p["hf_gpt2"], "config.json"), json.dumps({"architectures": ["GPT2LMHeadModel"]}))
  p["hf_no_config"] = os.path.join(root, "hf_no_config")
  os.makedirs(p["hf_no_config"])

  p["a_file"] = _write(os.path.join(root, "a_file"), "not a folder")
  p["yml_bad"] = _write(os.path.join(root, "bad.yml"), "steps: [1, 2\n")
  p["yml_list"] = _write(os.path.join(root, "list.yml"), "- steps\n- 3\n")
  return p


def _out(case: str) -> str:
  return f"{{out}}/{case}"


# (case id, command, arguments (with {placeholders} from the inputs), what the one line must contain)
CASES = [
  # train.py: keys and values
  ("not_an_integer", TRAIN, ["steps=abc"], "steps: expected an integer"),
  ("unknown_key", TRAIN, ["stpes=3"], "unknown config key 'stpes'"),
  ("negative_learning_rate", TRAIN, ["learning_rate=-1"], "learning_rate"),
  ("not_key_value", TRAIN, ["steps"], "'steps': expected key=value"),
  ("missing_yml", ["{python}", TRAIN[1], "nope.yml"], [], "config file 'nope.yml' not found"),
  ("invalid_yml", ["{python}", TRAIN[1], "{yml_bad}"], [], "is not valid YAML"),
  ("yml_not_a_mapping", ["{python}", TRAIN[1], "{yml_list}"], [], "must hold a mapping"),
  ("unknown_preset", TRAIN, ["model_name=nope"], "model_name: no preset 'nope'"),
  ("heads_not_multiple", TRAIN, ["num_query_heads=3", "num_kv_heads=2"], "num_query_heads"),
  ("bad_dtype", TRAIN, ["dtype=int8"], "dtype: expected one of"),
  ("eval_fraction_above_1", TRAIN, ["eval_fraction=2"], "eval_fraction"),
  ("zero_parallelism", TRAIN, ["ici_fsdp_parallelism=0"], "ici_fsdp_parallelism"),
  ("parquet_without_path", TRAIN, ["dataset_type=parquet"], "dataset_path: required"),
  ("sentencepiece_without_path", TRAIN, ["tokenizer_type=sentencepiece"], "tokenizer_path: required"),
  ("missing_tokenizer", TRAIN, ["tokenizer_type=huggingface", "tokenizer_path=/no/tok"], "tokenizer_path"),
  ("missing_parameters", TRAIN, ["load_parameters_path=/no/ckpt"], "load_parameters_path: '/no/ckpt'"),
  # gs:// paths are served (tests/test_cloud_storage.py has a missing bucket); other schemes are refused
  ("ftp_output", TRAIN, ["base_output_directory=ftp://bucket/runs"], "base_output_directory: 'ftp://bucket/runs' is a"),
  ("s3_dataset", TRAIN, ["dataset_path=s3://bucket/data.txt"], "dataset_path: 's3://bucket/data.txt'"),
  # an unreachable bucket (every run here points gs:// at a closed local port): one probe, one line
  (
    "gs_output_unreachable",
    TRAIN,
    ["base_output_directory=gs://kd-bucket/runs"],
    "cannot reach the bucket 'gs://kd-bucket'",
  ),
  (
    "gs_dataset_unreachable",
    TRAIN,
    ["dataset_path=gs://kd-bucket/data/*.jsonl"],
    "dataset_path: 'gs://kd-bucket/data/*",
  ),
  (
    "gs_teacher_unreachable",
    TRAIN,
    ["use_kd=true", "kd_teacher_parameters_path=gs://kd-bucket/teacher"],
    "kd_teacher_parameters_path: 'gs://kd-bucket/teacher': cannot reach the bucket",
  ),
  ("gs_cache_unreachable", TRAIN, ["use_kd=true", "kd_offline_data_dir=gs://kd-bucket/cache"], "kd_offline_data_dir"),
  ("gs_convert_unreachable", CONVERT, ["--hf_dir", "gs://kd-bucket/hf", "--output", "{out}/ckpt"], "--hf_dir: 'gs://"),
  ("output_is_a_file", TRAIN, ["base_output_directory={a_file}"], "base_output_directory"),
  ("run_folder_not_ours", TRAIN, ["run_name=foreign"], "holds 'notes.txt', which this job did not write"),
  ("run_folder_of_another_run", TRAIN, ["run_name=other"], "holds another run (emb_dim=64 there, 32 here)"),
  # train.py: distillation keys
  ("kd_key_without_use_kd", TRAIN, ["kd_alpha=0.3"], "kd_alpha: set to 0.3 but use_kd is false"),
  ("kd_alpha_above_1", TRAIN, ["use_kd=true", "kd_alpha=1.5"], "kd_alpha: expected a value in [0, 1]"),
  ("kd_temperature_zero", TRAIN, ["use_kd=true", "kd_temperature=0"], "kd_temperature"),
  ("top_k_and_top_p", TRAIN, ["use_kd=true", "kd_top_k=5", "kd_top_p=0.9"], "kd_top_p: exclusive with kd_top_k"),
  ("other_bucket_without_pruning", TRAIN, ["use_kd=true", "kd_use_other_bucket=true"], "kd_use_other_bucket"),
  ("missing_teacher", TRAIN, ["use_kd=true", "kd_teacher_parameters_path=/no/teacher"], "kd_teacher_parameters_path"),
  ("az_teacher", TRAIN, ["use_kd=true", "kd_teacher_parameters_path=az://b/t"], "kd_teacher_parameters_path: 'az"),
  ("teacher_preset_without_path", TRAIN, ["use_kd=true", "kd_teacher_model_name=tiny"], "kd_teacher_model_name"),
  (
    "teacher_override_without_value",
    TRAIN,
    ["use_kd=true", "kd_teacher_parameters_path={teacher}", "kd_teacher_overrides=emb_dim"],
    "kd_teacher_overrides: entry 'emb_dim': expected key=value",
  ),
  (
    "teacher_override_unknown_key",
    TRAIN,
    ["use_kd=true", "kd_teacher_parameters_path={teacher}", "kd_teacher_overrides=emb_dims=64"],
    "unknown config key 'emb_dims' in kd_teacher_overrides",
  ),
  ("feature_layer_out_of_range", TRAIN, ["use_kd=true", "kd_beta=1", "kd_layer_indices=0,9"], "kd_layer_indices"),
  (
    "feature_width_mismatch",
    TRAIN,
    ["use_kd=true", "kd_beta=1", "kd_feature_projection=false", "kd_teacher_parameters_path={wide}"]
    + ["kd_teacher_model_name=tiny", "kd_teacher_overrides=emb_dim=64"],
    "kd_feature_projection: student width 32 differs from teacher width 64",
  ),
  ("missing_cache", TRAIN, ["use_kd=true", "kd_offline_data_dir={empty_dir}"], "no manifest.json"),
  ("cache_manifest_cut", TRAIN, ["use_kd=true", "kd_offline_data_dir={cache_cut_manifest}"], "manifest.json"),
  ("cache_shard_cut", TRAIN, ["use_kd=true", "kd_offline_data_dir={cache_cut_shard}"], "shard-00000-00000"),
  (
    "cache_temperature_not_stored",
    TRAIN,
    ["use_kd=true", "kd_offline_data_dir={cache}", "kd_temperature=3.0"],
    "kd_temperature: 3.0 is not among the cached temperatures",
  ),
  (
    "cache_bit_flipped",
    TRAIN,
    ["use_kd=true", "kd_offline_data_dir={cache_flipped}"],
    "shard-00000-00000.array_record' is damaged (",  # found by kd_offline_verify before training
  ),
  (
    "cache_bit_flipped_read_in_training",
    TRAIN,
    ["use_kd=true", "kd_offline_data_dir={cache_flipped}", "kd_offline_verify=false", "steps=30"],
    "shard-00000-00000.array_record' is damaged (",
  ),
  # train.py: data, tokenizers and checkpoints found bad once read
  ("fractional_global_batch", TRAIN, ["per_device_batch_size=0.5"], "per_device_batch_size"),
  ("no_such_data_file", TRAIN, ["dataset_path=/no/such/file.txt"], "dataset_path: no readable files match"),
  ("empty_corpus", TRAIN, ["dataset_path={empty_text}"], "dataset_path: the text data set holds no text"),
  ("binary_as_text", TRAIN, ["dataset_path={binary}"], "is not text (it holds a NUL byte"),
  ("latin1_as_text", TRAIN, ["dataset_path={latin1}"], "is not UTF-8 text"),
  ("jsonl_null_text", TRAIN, ["dataset_type=jsonl", "dataset_path={null_jsonl}"], "field 'text' is null"),
  ("jsonl_no_column", TRAIN, ["dataset_type=jsonl", "dataset_path={nocol_jsonl}"], "has no field 'text'"),
  ("jsonl_invalid", TRAIN, ["dataset_type=jsonl", "dataset_path={bad_jsonl}"], "is not valid JSON"),
  ("text_as_parquet", TRAIN, ["dataset_type=parquet", "dataset_path={text}"], "cannot read parquet file"),
  ("text_as_arrayrecord", TRAIN, ["dataset_type=arrayrecord", "dataset_path={text}"], "is not an ArrayRecord file"),
  (
    "tokenizer_json_as_sentencepiece",
    TRAIN,
    ["tokenizer_type=sentencepiece", "tokenizer_path={tok_json}", "vocab_size=512"],
    "is not a sentencepiece model",
  ),
  (
    "text_as_tokenizer_json",
    TRAIN,
    ["tokenizer_type=huggingface", "tokenizer_path={text}"],
    "is not a Hugging Face tokenizer.json",
  ),
  (
    "tokenizer_larger_than_vocab_on_synthetic_data",
    TRAIN,
    ["dataset_type=synthetic", "tokenizer_type=huggingface", "tokenizer_path={tok_json}"],
    "vocab_size: the tokenizer has 512 tokens but the model's vocab_size is 320",
  ),
  ("parameters_not_a_checkpoint", TRAIN, ["load_parameters_path={empty_dir}"], "parameters checkpoint"),
  ("parameters_truncated", TRAIN, ["load_parameters_path={truncated_teacher}"], "parameters checkpoint"),
  ("parameters_of_another_model", TRAIN, ["load_parameters_path={wide}"], "parameters checkpoint"),
  (
    "teacher_truncated",
    TRAIN,
    ["use_kd=true", "kd_teacher_parameters_path={truncated_teacher}", "kd_teacher_model_name=tiny"],
    "parameters checkpoint",
  ),
  (
    "diverging_learning_rate",
    TRAIN,
    ["steps=8", "learning_rate=1e30", "gradient_clipping_threshold=0", "warmup_steps_fraction=0"],
    "(not finite)",
  ),
  ("overflowing_activations", TRAIN, ["steps=8", "init_std=1e6"], "the gradient norm is exactly 0"),
  # save_top_k_teacher_logits.py
  ("save_without_output", SAVE, ["kd_teacher_parameters_path={teacher}"], "kd_offline_output_dir"),
  ("save_without_teacher", SAVE, ["kd_offline_output_dir={out}/cache"], "kd_teacher_parameters_path"),
  (
    "save_into_a_foreign_folder",
    SAVE,
    ["kd_teacher_parameters_path={teacher}", "kd_offline_output_dir={out}/foreign"],
    "holds 'notes.txt', which this job did not write",
  ),
  (
    "save_into_a_file",
    SAVE,
    ["kd_teacher_parameters_path={teacher}", "kd_offline_output_dir={a_file}"],
    "kd_offline_output_dir",
  ),
  (
    "save_to_ftp",
    SAVE,
    ["kd_teacher_parameters_path={teacher}", "kd_offline_output_dir=ftp://b/cache"],
    "kd_offline_output_dir: 'ftp://b/cache'",
  ),
  (
    "save_top_k_zero",
    SAVE,
    ["kd_teacher_parameters_path={teacher}", "kd_offline_output_dir={out}/c", "kd_offline_top_k=0"],
    "kd_offline_top_k",
  ),
  (
    "save_bad_temperatures",
    SAVE,
    ["kd_teacher_parameters_path={teacher}", "kd_offline_output_dir={out}/c", "kd_offline_temperatures=abc"],
    "kd_offline_temperatures",
  ),
  (
    "save_over_a_manifest_it_did_not_write",
    SAVE,
    ["kd_teacher_parameters_path={teacher}", "kd_offline_output_dir={out}/stray"],
    "holds a manifest.json without this host's progress file",
  ),
  (
    "save_truncated_teacher",
    SAVE,
    ["kd_teacher_parameters_path={truncated_teacher}", "kd_offline_output_dir={out}/c"],
    "parameters checkpoint",
  ),
  (
    "save_into_another_cache",
    SAVE,
    ["kd_teacher_parameters_path={teacher}", "kd_offline_output_dir={cache}", "kd_offline_top_k=8"],
    "holds a cache made with another 'top_k'",
  ),
  # decode
  (
    "decode_missing_prompts_file",
    DECODE,
    ["base.yml", "load_parameters_path={teacher}", "decode_input_path={out}/prompts.jsonl"],
    "decode_input_path: '",
  ),
  # convert_hf_checkpoint
  ("convert_missing_dir", CONVERT, ["--hf_dir", "/no/hf", "--output", "{out}/ckpt"], "--hf_dir"),
  ("convert_no_config", CONVERT, ["--hf_dir", "{hf_no_config}", "--output", "{out}/ckpt"], "no config.json"),
  ("convert_broken_config", CONVERT, ["--hf_dir", "{hf_broken_config}", "--output", "{out}/ckpt"], "config.json"),
  ("convert_gpt2", CONVERT, ["--hf_dir", "{hf_gpt2}", "--output", "{out}/ckpt"], "GPT2LMHeadModel"),
  ("convert_truncated_weights", CONVERT, ["--hf_dir", "{hf_cut}", "--output", "{out}/ckpt"], "model.safetensors"),
  ("convert_nan_weights", CONVERT, ["--hf_dir", "{hf_nan}", "--output", "{out}/ckpt"], "holds NaN or Inf"),
  (
    "convert_missing_tensor",
    CONVERT,
    ["--hf_dir", "{hf_missing}", "--output", "{out}/ckpt"],
    "no tensor 'model.layers.1.mlp.up_proj.weight'",
  ),
  ("convert_into_nonempty", CONVERT, ["--hf_dir", "{hf}", "--output", "{out}/foreign"], "is not empty"),
  ("convert_into_a_file", CONVERT, ["--hf_dir", "{hf}", "--output", "{a_file}"], "--output"),
  ("convert_from_ftp", CONVERT, ["--hf_dir", "ftp://b/hf", "--output", "{out}/ckpt"], "--hf_dir: 'ftp://b/hf' is a"),
  ("convert_without_output", CONVERT, ["--hf_dir", "{hf}"], "--output"),
  ("export_missing_checkpoint", CONVERT, ["--to_hf", "--checkpoint", "/no/ckpt", "--output", "{out}/hf"], "/no/ckpt"),
  (
    "export_truncated_checkpoint",
    CONVERT,
    ["--to_hf", "--checkpoint", "{truncated_teacher}", "--output", "{out}/hf", "--model_name", "tiny"],
    "parameters checkpoint",
  ),
  (
    "export_bad_shard_size",
    CONVERT,
    ["--to_hf", "--checkpoint", "{teacher}", "--output", "{out}/hf", "--model_name", "tiny", "--max_shard_size", "x"],
    "--max_shard_size",
  ),
]


def _command(case, inputs: dict, out: str) -> list[str]:
  _, job, args, _ = case
  fill = lambda s: s.format(**inputs, out=out, python=sys.executable)
  if job is TRAIN:
    return [*TRAIN, *BASE, f"base_output_directory={out}", *[fill(a) for a in args]]
  if job is SAVE:
    return [*SAVE, *SAVE_BASE, *[fill(a) for a in args]]
  return [fill(a) for a in job] + [fill(a) for a in args]


def _fingerprint(root: str) -> dict[str, str]:
  digests = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        digests[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return digests


# Most cases run forked from a process that has imported JAX already (tests/forked_jobs.py). One case of each
# job that fails after the job has imported JAX (and loaded a checkpoint) runs as a plain `python` process,
# so that what a job prints while it imports (JAX, libtpu and the libraries they load) is inside the
# one-line check too.
PLAIN_PROCESS_CASES = {
  "teacher_truncated",
  "overflowing_activations",
  "save_truncated_teacher",
  "decode_missing_prompts_file",
  "convert_nan_weights",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  inputs_root = str(tmp_path_factory.mktemp("inputs"))
  inputs = _build_inputs(inputs_root)
  before = _fingerprint(inputs_root)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(1)}
  env["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there: gs:// is unreachable

  def run(case):
    out = str(tmp_path_factory.mktemp(case[0]))
    _write(os.path.join(out, "foreign", "notes.txt"), "a user's file")
    _write(os.path.join(out, "other", "config.json"), json.dumps({"emb_dim": 64}))
    _write(os.path.join(out, "stray", "manifest.json"), "{}")
    command = _command(case, inputs, out)
    if case[0] in PLAIN_PROCESS_CASES:
      proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    else:
      proc = forked_jobs.run(command, cwd=REPO, env=env, timeout=300)
    proc.foreign_after = sorted(os.listdir(os.path.join(out, "foreign")))  # a user's folder, never written into
    with open(os.path.join(out, "stray", "manifest.json"), encoding="utf-8") as f:
      proc.stray_manifest_after = f.read()
    return case[0], proc

  with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
    done = dict(pool.map(run, CASES))
  return done, before, _fingerprint(inputs_root)


def test_there_are_at_least_60_cases_with_distinct_names():
  names = [case[0] for case in CASES]
  assert len(names) >= 60 and len(set(names)) == len(names) and set(names) >= PLAIN_PROCESS_CASES


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_input_gets_one_line_naming_it(results, case):
  proc = results[0][case[0]]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith(("config error: ", "error: ")), lines[0]
  assert not lines[0].split(": ", 1)[1].startswith(("'", '"')), lines[0]  # the message itself, not its repr
  assert case[3] in lines[0], lines[0]
  assert proc.foreign_after == ["notes.txt"] and proc.stray_manifest_after == "{}"


def test_no_input_file_was_changed_by_any_case(results):
  _, before, after = results
  assert after == before
