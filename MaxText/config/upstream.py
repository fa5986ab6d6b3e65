"""Upstream MaxText's config surface, translated in this one place into this project's canonical keys.

A MaxText user's yml files and commands work here unchanged: the distillation guide's `distill_*` keys
and `offline_data_dir`, the `student_overrides` / `teacher_overrides` blocks (and their dotted
command-line form `teacher_overrides.load_parameters_path=...`), the Hugging Face input keys over local
files (`dataset_type=hf hf_path=parquet hf_train_files=...`), `train_data_columns=['messages']`, the
`base_*` model keys, and the keys upstream needs only online. The `kd_*` keys stay canonical: every
upstream key becomes one of them (what config.json records), so a run's meaning has one spelling.

Two kinds of upstream key:
- renamed keys (RENAMED) are translated layer by layer (each yml file, the command line, each block),
  so that setting both names of one concept in one layer to different values is an error naming both;
- keys whose meaning needs other keys' final values (EXTRA_DEFAULTS: `hf_path` with `dataset_type=hf`,
  `ici_expert_parallelism`, `profiler`, ...) are merged like any key and resolved once, in `resolve`.
Precedence is upstream's: yml < command line < student_overrides; the teacher takes its model keys from
`teacher_overrides` only (command-line model keys never reach it).
"""

from __future__ import annotations

import re
from typing import Any

from MaxText.config.errors import ConfigError

BLOCKS = ("student_overrides", "teacher_overrides")

# upstream key -> canonical key (the value keeps its meaning; None means "unset": the canonical default)
RENAMED = {
  "distill_alpha": "kd_alpha",
  "distill_alpha_end": "kd_alpha_end",
  "distill_alpha_schedule": "kd_alpha_schedule",
  "distill_temperature": "kd_temperature",
  "distill_temperature_end": "kd_temperature_end",
  "distill_temperature_schedule": "kd_temperature_schedule",
  "distill_beta": "kd_beta",
  "distill_beta_end": "kd_beta_end",
  "distill_beta_schedule": "kd_beta_schedule",
  "distill_feature_loss_type": "kd_feature_loss_type",
  "offline_data_dir": "kd_offline_data_dir",
  "base_emb_dim": "emb_dim",
  "base_num_query_heads": "num_query_heads",
  "base_num_kv_heads": "num_kv_heads",
  "base_mlp_dim": "mlp_dim",
  "base_num_decoder_layers": "num_decoder_layers",
  "rope_max_timescale": "rope_theta",
  "learning_rate_final_fraction": "cosine_learning_rate_final_fraction",
  "max_num_checkpoints_to_keep": "max_to_keep",
  "hf_train_files": "dataset_path",
  "hf_eval_files": "eval_dataset_path",
}
# distill_layer_indices aligns the same-numbered layers of both models (upstream's meaning): two keys here.
LAYER_INDICES = ("distill_layer_indices", ("kd_layer_indices", "kd_teacher_layer_indices"))
# Upstream keys that base.yml lacks, merged with these defaults and resolved (or refused) by `resolve`.
EXTRA_DEFAULTS: dict[str, Any] = {
  "hf_path": "",
  "hf_name": "",
  "hf_data_dir": "",
  "train_split": "train",
  "hf_eval_split": "",
  "eval_split": "",
  "eval_data_columns": "",
  "hf_access_token": "",
  "profiler": "",
  "skip_jax_distributed_system": False,
  "ici_expert_parallelism": 1,
  "enable_nnx": True,
  "save_checkpoint_on_completion": True,
  "learning_rate_schedule_steps": -1,
  "use_tunix_gradient_accumulation": False,
  "hardware": "",
}
# hf_path values that name local (or bucket) files, and the reader each gets here
HF_FILE_TYPES = {"parquet": "parquet", "json": "jsonl", "arrow": "arrow"}
# the checkpoint item folder upstream's converter and trainers append to a step folder
_ITEM_PATH = re.compile(r"^(?P<step>.*/\d+)/(items|model_params)/?$")
# what teacher_overrides may set besides model keys, and the canonical key each becomes
_TEACHER_KEYS = {
  "model_name": "kd_teacher_model_name",
  "load_parameters_path": "kd_teacher_parameters_path",
  "dtype": "kd_teacher_dtype",
}


def split_blocks(layer: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
  """(the layer without its blocks, {block: its keys}): yml mappings and dotted `block.key` entries."""
  plain, blocks = {}, {name: {} for name in BLOCKS}
  for key, value in layer.items():
    block, dot, inner = key.partition(".")
    if key in BLOCKS:
      if value is None:
        continue
      if not isinstance(value, dict):
        raise ConfigError(f"{key} in {source}: expected a mapping of key: value, got {value!r}")
      blocks[key].update(value)
    elif dot and block in BLOCKS:
      blocks[block][inner] = value
    else:
      plain[key] = value
  return plain, blocks


def _list_as_text(key: str, value: Any) -> Any:
  """Upstream's list values (`[3, 7]`, `['messages']`) as the comma-separated strings this project keys take."""
  if isinstance(value, (list, tuple)):
    return ",".join(str(v) for v in value)
  return value


def _set(out: dict[str, Any], canonical: str, value: Any, upstream: str, layer: dict[str, Any], source: str):
  """Sets a canonical key, refusing a layer that gives it another value under its own name."""
  if canonical in layer and layer[canonical] != value and str(layer[canonical]) != str(value):
    raise ConfigError(
      f"{upstream}={value!r} and {canonical}={layer[canonical]!r} in {source} name one setting ({canonical}); give one"
    )
  out[canonical] = value


def typed_names(layer: dict[str, Any], prefix: str = "") -> dict[str, str]:
  """{canonical key: the upstream name it was written as} for one layer (`prefix`: its block, dotted)."""
  names = {canonical: f"{prefix}{upstream}" for upstream, canonical in RENAMED.items() if upstream in layer}
  if LAYER_INDICES[0] in layer:
    names.update({canonical: f"{prefix}{LAYER_INDICES[0]}" for canonical in LAYER_INDICES[1]})
  return names


def as_typed(error: ConfigError, names: dict[str, str]) -> ConfigError:
  """`error` about a canonical key the user wrote under upstream's name, reworded to lead with that name
  (the canonical key beside it); any other error as it is."""
  key, colon, rest = str(error).partition(":")
  if not colon or key not in names:
    return error
  return ConfigError(f"{names[key]} ({key} here):{rest}")


def _is_none(value: Any) -> bool:
  """Upstream's None, from a yml (null / None) or the command line (`distill_alpha_end=None`)."""
  return value is None or value in ("None", "null")


def translate(layer: dict[str, Any], source: str, defaults: dict[str, Any]) -> dict[str, Any]:
  """One layer (a yml file's keys, the command line, a block) with upstream's renamed keys made canonical."""
  out = {k: v for k, v in layer.items() if k not in RENAMED and k != LAYER_INDICES[0] and k != "lora"}
  for upstream, canonical in RENAMED.items():
    if upstream in layer:
      value = layer[upstream]
      _set(out, canonical, defaults[canonical] if _is_none(value) else value, upstream, layer, source)
  if not _is_none(layer.get(LAYER_INDICES[0])):
    indices = _list_as_text(LAYER_INDICES[0], layer[LAYER_INDICES[0]])
    for canonical in LAYER_INDICES[1]:
      _set(out, canonical, indices, LAYER_INDICES[0], layer, source)
  beta = out.get("kd_beta")
  if "distill_beta" in layer and isinstance(beta, (int, float)) and beta > 0 and "kd_feature_projection" not in layer:
    out["kd_feature_projection"] = False  # upstream compares the activations themselves, with no learned map
  for key in ("train_data_columns", "eval_data_columns"):
    if key in out:
      out[key] = _one_column(key, out[key])
  for key in ("load_parameters_path", "load_full_state_path", "kd_teacher_parameters_path"):
    if isinstance(out.get(key), str):
      out[key] = step_folder(out[key])
  _check_lora(layer.get("lora"), source)
  return out


def _one_column(key: str, value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    if len(value) != 1:
      raise ConfigError(f"{key}: one column of conversations (or text) is read, got {list(value)!r}")
    return str(value[0])
  return value


def _check_lora(lora: Any, source: str) -> None:
  if lora is None:
    return
  if not isinstance(lora, dict):
    raise ConfigError(f"lora in {source}: expected a mapping (enable_lora: ...), got {lora!r}")
  if str(lora.get("enable_lora", False)).lower() == "true":
    raise ConfigError("lora.enable_lora: LoRA/QLoRA is not supported here; every parameter is trained")


def step_folder(path: str) -> str:
  """`<step>/items` or `<step>/model_params` (upstream's item folders) -> the step folder itself."""
  match = _ITEM_PATH.match(path)
  return match.group("step") if match else path


def teacher_layer(block: dict[str, Any], model_keys: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
  """teacher_overrides -> kd_teacher_* keys: model_name, load_parameters_path, dtype, and model keys
  (as the kd_teacher_overrides list). Run keys are the student's: the teacher reads the student's batches."""
  translated = translate(block, "teacher_overrides", defaults)
  out, overrides = {}, []
  for key, value in translated.items():
    if key in _TEACHER_KEYS:
      out[_TEACHER_KEYS[key]] = step_folder(value) if key == "load_parameters_path" else value
    elif key in model_keys:
      overrides.append(f"{key}={value}")
    elif key not in EXTRA_DEFAULTS:  # enable_nnx and the like mean the same for both models
      raise ConfigError(
        f"teacher_overrides.{key}: the teacher takes model keys, model_name, load_parameters_path and dtype; "
        f"{key} is a run key, shared with the student (set it at the top level)"
      )
  if overrides:
    out["kd_teacher_overrides"] = ",".join(overrides)
  return out


def check_teacher_given(teacher_block: dict[str, Any], values: dict[str, Any]) -> None:
  """Upstream's refusal: a teacher block with no checkpoint, where no offline cache replaces the teacher."""
  if not teacher_block or values["kd_teacher_parameters_path"] or values["kd_offline_data_dir"]:
    return
  if values["kd_teachers"] or not values["use_kd"]:
    return
  raise ConfigError(
    "teacher_overrides.load_parameters_path: the teacher's checkpoint is missing (set it, or "
    "kd_teacher_parameters_path; offline_data_dir trains from a cache instead)"
  )


def resolve(values: dict[str, Any]) -> dict[str, Any]:
  """The merged values with the EXTRA_DEFAULTS keys turned into canonical ones (or refused, naming why)."""
  extra = {key: values.pop(key) for key in EXTRA_DEFAULTS}
  _resolve_hf(values, extra)
  _resolve_runtime(values, extra)
  return values


def _resolve_hf(values: dict[str, Any], extra: dict[str, Any]) -> None:
  hf_path = extra["hf_path"]
  if values["dataset_type"] != "hf":
    if hf_path or extra["hf_data_dir"]:
      raise ConfigError(f"hf_path: {hf_path or extra['hf_data_dir']!r} is read with dataset_type=hf")
    return
  if hf_path not in HF_FILE_TYPES:
    raise ConfigError(
      f"hf_path: {hf_path!r} names a Hugging Face Hub data set; nothing is downloaded here: give local or bucket "
      "files with hf_path=parquet|json|arrow and hf_train_files (and hf_eval_files)"
    )
  values["dataset_type"] = HF_FILE_TYPES[hf_path]
  if extra["hf_data_dir"]:
    if values["dataset_path"]:
      raise ConfigError("hf_data_dir: give hf_train_files or hf_data_dir, not both")
    values["dataset_path"] = extra["hf_data_dir"]
  if not values["dataset_path"]:
    raise ConfigError(f"hf_train_files: required with hf_path={hf_path} (the files to read; nothing is downloaded)")
  for key, split in (("train_split", extra["train_split"]), ("hf_eval_split", extra["hf_eval_split"])):
    if split not in ("", "train"):
      raise ConfigError(
        f"{key}: {split!r}; local files form one split, 'train' (name the held-out files with hf_eval_files)"
      )
  columns = extra["eval_data_columns"]
  if columns and columns != values["train_data_columns" if values["use_sft"] else "data_column"]:
    if values["use_sft"]:
      raise ConfigError("eval_data_columns: SFT reads the eval conversations from train_data_columns' column")
    values["eval_data_column"] = columns
  if not values["use_sft"] and values["train_data_columns"] != "messages":
    values["data_column"] = values["train_data_columns"]  # upstream names the text column this way
    values["train_data_columns"] = "messages"


def _refuse_unless(ok: bool, key: str, value: Any, why: str) -> None:
  if not ok:
    raise ConfigError(f"{key}: {value!r} is not supported here: {why}")


def _resolve_runtime(values: dict[str, Any], extra: dict[str, Any]) -> None:
  _refuse_unless(extra["enable_nnx"], "enable_nnx", False, "the models are Flax NNX only (one model API)")
  _refuse_unless(
    extra["save_checkpoint_on_completion"], "save_checkpoint_on_completion", False, "the last step is always saved"
  )
  steps = extra["learning_rate_schedule_steps"]
  _refuse_unless(steps in (-1, values["steps"]), "learning_rate_schedule_steps", steps, "the schedule spans `steps`")
  profiler = extra["profiler"]
  _refuse_unless(profiler in ("", "xplane"), "profiler", profiler, "jax.profiler (xplane) traces are written")
  if profiler == "xplane" and not values["profiler_steps"]:
    values["profiler_steps"] = 5  # upstream's default trace length
  expert = extra["ici_expert_parallelism"]
  _refuse_unless(expert in (1, -1), "ici_expert_parallelism", expert, "the models are dense (no experts)")
  if expert == -1:  # a dense model's expert axis carries the batch, as the data axis does
    filling = [a for a in ("fsdp", "tensor") if values[f"ici_{a}_parallelism"] == -1]
    if filling or values["ici_data_parallelism"] not in (1, -1):
      taken = filling[0] if filling else "data"
      raise ConfigError(
        f"ici_expert_parallelism: -1 fills the mesh (as the data axis, the models being dense) but "
        f"ici_{taken}_parallelism={values[f'ici_{taken}_parallelism']} takes that role; set it to a number"
      )
    values["ici_data_parallelism"] = -1
  if extra["skip_jax_distributed_system"]:
    values["jax_distributed_initialize"] = False
  hardware = extra["hardware"]
  _refuse_unless(hardware in ("", "cpu", "gpu", "tpu", "gpu_multiprocess"), "hardware", hardware, "unknown hardware")
