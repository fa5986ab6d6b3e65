"""Checks of the distillation keys and the teacher's own config; run by `pyconfig.validate`.

Split from pyconfig.py only for size: it is the same concern (turning keys into a validated config),
and everything here runs before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from typing import Any

from MaxText import offline_cache
from MaxText.pyconfig import (
  Config,
  ConfigError,
  _check_known,
  _coerce,
  defaults,
  load_model_preset,
  parse_overrides,
)

# Keys that describe a model's architecture and numerics: the teacher has its own values for these.
MODEL_KEYS = (
  "vocab_size",
  "emb_dim",
  "num_decoder_layers",
  "num_query_heads",
  "num_kv_heads",
  "head_dim",
  "mlp_dim",
  "normalization_layer_epsilon",
  "rope_theta",
  "rope_scaling_factor",
  "rope_low_freq_factor",
  "rope_high_freq_factor",
  "rope_original_max_position",
  "use_qk_norm",
  "use_qkv_bias",
  "logits_via_embedding",
  "init_std",
  "weight_dtype",
  "scan_layers",
)


def _check_kd(v: dict[str, Any]) -> None:
  base = defaults()
  if not v["use_kd"]:
    stray = [k for k in base if k.startswith("kd_") and v[k] != base[k]]
    if stray:
      raise ConfigError(f"{stray[0]}: set to {v[stray[0]]!r} but use_kd is false (set use_kd=true)")
    return
  for name in ("kd_alpha", "kd_temperature", "kd_beta"):
    if v[f"{name}_schedule"] != "constant" and v[f"{name}_end"] == -1.0:
      raise ConfigError(f"{name}_end: required by {name}_schedule={v[f'{name}_schedule']}")
  if v["kd_top_k"] and v["kd_top_p"]:
    raise ConfigError("kd_top_p: exclusive with kd_top_k (use one pruning rule)")
  if v["kd_use_other_bucket"] and not (v["kd_top_k"] or v["kd_top_p"]):
    raise ConfigError("kd_use_other_bucket: needs pruning (kd_top_k or kd_top_p); without it there is no OTHER mass")
  if v["kd_use_hard_labels"]:
    meaningless = [
      k
      for k in (
        "kd_top_k",
        "kd_top_p",
        "kd_use_other_bucket",
        "kd_temperature",
        "kd_temperature_end",
        "kd_temperature_schedule",
      )
      if v[k] != base[k]
    ]
    if meaningless:
      raise ConfigError(f"{meaningless[0]}: has no effect with kd_use_hard_labels (the teacher's argmax ignores it)")
  path = v["kd_teacher_parameters_path"]
  if not path:
    if v["kd_teacher_model_name"] or v["kd_teacher_overrides"]:
      raise ConfigError(
        "kd_teacher_model_name: a teacher architecture needs kd_teacher_parameters_path "
        "(empty path = self-distillation from the student's own initial parameters)"
      )
    return
  if not os.path.isdir(path):
    raise ConfigError(f"kd_teacher_parameters_path: {path!r} does not exist or is not a folder")
  if not os.access(path, os.R_OK | os.X_OK):
    raise ConfigError(f"kd_teacher_parameters_path: {path!r} is not readable")


def teacher_model_values(v: dict[str, Any]) -> dict[str, Any]:
  """The teacher's model keys: base.yml < teacher preset < kd_teacher_overrides (student CLI keys never leak)."""
  base = defaults()
  preset_name = v["kd_teacher_model_name"] or v["model_name"]
  preset = load_model_preset(preset_name)
  pairs = [p for p in v["kd_teacher_overrides"].split(",") if p.strip()]
  overrides = parse_overrides(pairs)
  for key in overrides:
    _check_known(key, list(MODEL_KEYS), "kd_teacher_overrides")
  model = {k: base[k] for k in MODEL_KEYS}
  for layer in (preset, overrides):
    for key, value in layer.items():
      if key in MODEL_KEYS:
        model[key] = _coerce(key, value, base[key])
  return model


def _check_teacher(v: dict[str, Any]) -> None:
  if not (v["use_kd"] and v["kd_teacher_parameters_path"]):
    return
  teacher = teacher_model_values(v)
  if teacher["vocab_size"] != v["vocab_size"]:
    raise ConfigError(
      f"kd_teacher_overrides: teacher vocab_size {teacher['vocab_size']} differs from the "
      f"student's vocab_size {v['vocab_size']}; they must match"
    )
  if teacher["num_query_heads"] % teacher["num_kv_heads"]:
    raise ConfigError("kd_teacher_overrides: teacher num_query_heads must be a multiple of its num_kv_heads")
  _check_against_saved_config(v["kd_teacher_parameters_path"], teacher)


def _check_against_saved_config(path: str, teacher: dict[str, Any]) -> None:
  """Compares with the model keys saved beside the checkpoint, when there are some.

  A checkpoint of a run (<run>/checkpoints/<step>) has the run's config.json two levels up; a
  converted Hugging Face checkpoint has model_config.json inside.
  """
  path = os.path.abspath(path)
  run_dir = os.path.dirname(os.path.dirname(path))
  candidates = [os.path.join(path, "model_config.json"), os.path.join(run_dir, "config.json")]
  saved_path = next((c for c in candidates if os.path.isfile(c)), None)
  if saved_path is None:
    return
  with open(saved_path, encoding="utf-8") as f:
    saved = json.load(f)
  for key in MODEL_KEYS:
    if key in saved and key != "scan_layers" and saved[key] != teacher[key]:
      raise ConfigError(
        f"kd_teacher_overrides: teacher {key}={teacher[key]!r} but the checkpoint at {path!r} was "
        f"trained with {key}={saved[key]!r} (set kd_teacher_model_name / kd_teacher_overrides)"
      )


def _indices(key: str, raw: str) -> list[int] | None:
  if not raw.strip():
    return None
  try:
    return [int(x) for x in raw.split(",")]
  except ValueError:
    raise ConfigError(f"{key}: expected comma-separated layer numbers, got {raw!r}") from None


def feature_layer_pairs(v: dict[str, Any]) -> list[tuple[int, int]]:
  """(student layer, teacher layer) pairs aligned by the feature term, checked against both depths."""
  student_depth = v["num_decoder_layers"]
  teacher = teacher_model_values(v) if v["kd_teacher_parameters_path"] else v
  teacher_depth = teacher["num_decoder_layers"]
  student = _indices("kd_layer_indices", v["kd_layer_indices"])
  if student is None:  # evenly spaced, ending at the last layer
    count = min(4, student_depth)
    student = [round((i + 1) * student_depth / count) - 1 for i in range(count)]
  matched = _indices("kd_teacher_layer_indices", v["kd_teacher_layer_indices"])
  if matched is None:  # the same relative depth
    matched = [round((s + 1) * teacher_depth / student_depth) - 1 for s in student]
  if len(matched) != len(student):
    raise ConfigError(f"kd_teacher_layer_indices: {len(matched)} layers given for {len(student)} student layers")
  for key, layers, depth in (
    ("kd_layer_indices", student, student_depth),
    ("kd_teacher_layer_indices", matched, teacher_depth),
  ):
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
      raise ConfigError(f"{key}: layer {bad[0]} is out of range for a {depth}-layer model")
  return list(zip(student, matched, strict=True))


def uses_features(v: dict[str, Any]) -> bool:
  return bool(v["use_kd"]) and (v["kd_beta"] > 0 or v["kd_beta_end"] > 0)


def _check_features(v: dict[str, Any]) -> None:
  base = defaults()
  if v["kd_beta"] == 0 and v["kd_beta_end"] > 0:
    raise ConfigError(
      "kd_beta: 0 with kd_beta_end > 0 would compile a step without features; start the schedule "
      "from a small positive value (e.g. kd_beta=1e-4)"
    )
  if not uses_features(v):
    stray = [
      k
      for k in ("kd_feature_loss_type", "kd_layer_indices", "kd_teacher_layer_indices", "kd_feature_projection")
      if v[k] != base[k]
    ]
    if stray:
      raise ConfigError(f"{stray[0]}: has no effect with kd_beta=0 (feature distillation is off)")
    return
  feature_layer_pairs(v)
  teacher_width = teacher_model_values(v)["emb_dim"] if v["kd_teacher_parameters_path"] else v["emb_dim"]
  if not v["kd_feature_projection"] and teacher_width != v["emb_dim"]:
    raise ConfigError(
      f"kd_feature_projection: student width {v['emb_dim']} differs from teacher width "
      f"{teacher_width}; features can only be compared through a projection (set it true)"
    )


def feature_projection_shape(config) -> tuple[int, int, int] | None:
  """(aligned layers, student width, teacher width) of the learned feature projection, or None."""
  v = dataclasses.asdict(config)
  if not (uses_features(v) and config.kd_feature_projection):
    return None
  teacher_width = teacher_model_values(v)["emb_dim"] if config.kd_teacher_parameters_path else config.emb_dim
  return len(feature_layer_pairs(v)), config.emb_dim, teacher_width


def teacher_config(config) -> Any:
  """The teacher's Config: the student's run keys with the teacher's own model keys (itself when self-distilling)."""
  if not config.kd_teacher_parameters_path:
    return config
  values = dataclasses.asdict(config)
  values.update(teacher_model_values(values))
  values.update(
    model_name=config.kd_teacher_model_name or config.model_name,
    remat_policy="none",
    dtype=config.kd_teacher_dtype or config.dtype,
    kd_beta=0.0,  # the teacher carries no feature projection of its own
    kd_beta_end=-1.0,
  )
  return Config(**values)


def _check_offline_save_keys(v: dict[str, Any]) -> None:
  """The keys of save_top_k_teacher_logits.py (checked when kd_offline_output_dir is set)."""
  if not v["kd_offline_output_dir"]:
    return
  if not v["kd_teacher_parameters_path"]:
    raise ConfigError("kd_teacher_parameters_path: the teacher whose logits are cached must be given")
  if not 1 <= v["kd_offline_top_k"] <= v["vocab_size"]:
    raise ConfigError(f"kd_offline_top_k: expected 1..vocab_size ({v['vocab_size']}), got {v['kd_offline_top_k']}")
  try:
    listed = [float(t) for t in v["kd_offline_temperatures"].split(",") if t.strip()]
  except ValueError:
    raise ConfigError(
      f"kd_offline_temperatures: expected comma-separated numbers, got {v['kd_offline_temperatures']!r}"
    ) from None
  if any(t <= 0 for t in listed):
    raise ConfigError(f"kd_offline_temperatures: temperatures must be > 0, got {v['kd_offline_temperatures']!r}")
  if v["kd_offline_logits_dtype"] not in offline_cache.VALUE_DTYPES:
    raise ConfigError(f"kd_offline_logits_dtype: expected one of {sorted(offline_cache.VALUE_DTYPES)}")
  if v["kd_offline_batches_per_shard"] < 1:
    raise ConfigError("kd_offline_batches_per_shard: must be >= 1")


def _check_offline_run(v: dict[str, Any]) -> None:
  """Offline training: the cache replaces the teacher, and must fit this run."""
  if v["kd_offline_normalization"] not in offline_cache.NORMALIZATIONS:
    raise ConfigError(f"kd_offline_normalization: expected one of {', '.join(offline_cache.NORMALIZATIONS)}")
  directory = v["kd_offline_data_dir"]
  if not directory:
    return
  conflicts = {
    "kd_teacher_parameters_path": "the cache replaces the teacher",
    "kd_top_p": "the cache holds a fixed top-k",
    "kd_use_other_bucket": "kd_offline_normalization chooses how the tail is treated",
    "kd_beta": "features are not cached",
  }
  for key, why in conflicts.items():
    if v[key]:
      raise ConfigError(f"{key}: cannot be used with kd_offline_data_dir ({why})")
  try:
    manifest = offline_cache.read_manifest(directory)
    offline_cache.check_shards(directory, manifest)
    offline_cache.check_against_run(manifest, types.SimpleNamespace(**v))
  except (offline_cache.CacheError, OSError) as e:
    raise ConfigError(str(e)) from None
  stored = manifest["temperatures"]
  constant = v["kd_temperature_schedule"] == "constant"
  if v["kd_offline_approximate_temperature"] or v["kd_use_hard_labels"]:
    return
  if not constant or not any(abs(t - v["kd_temperature"]) <= 1e-6 * t for t in stored):
    wanted = v["kd_temperature"] if constant else f"a {v['kd_temperature_schedule']} schedule"
    raise ConfigError(
      f"kd_temperature: {wanted} is not among the cached temperatures {stored}; save it with "
      "kd_offline_temperatures or set kd_offline_approximate_temperature=true"
    )


def validate_kd(values: dict[str, Any]) -> None:
  _check_kd(values)
  _check_teacher(values)
  _check_features(values)
  if values["use_kd"]:
    _check_offline_save_keys(values)
    _check_offline_run(values)
