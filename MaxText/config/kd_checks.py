"""Checks of the distillation keys against each other and the student's keys; no file is read here
(the teacher folder and the offline cache are checked by the pre-flight step, training/preflight.py)."""

from __future__ import annotations

from typing import Any

from MaxText.config.checks import check_attention_serves
from MaxText.config.cross_tokenizer_checks import check_cross_tokenizer
from MaxText.config.errors import ConfigError
from MaxText.config.loader import defaults
from MaxText.config.views import (
  compute_dtype,
  feature_layer_pairs,
  relation_heads,
  relation_widths,
  teacher_model_values,
  teacher_specs,
  teacher_width,
  uses_features,
)

_HARD_LABEL_NO_OPS = (
  "kd_divergence",
  "kd_top_k",
  "kd_top_p",
  "kd_use_other_bucket",
  "kd_temperature",
  "kd_temperature_end",
  "kd_temperature_schedule",
)
_FEATURE_KEYS = (
  "kd_feature_source",
  "kd_feature_loss_type",
  "kd_layer_indices",
  "kd_teacher_layer_indices",
  "kd_feature_projection",
  "kd_relation_heads",
  "kd_relation_query_chunk",
)
_RELATION_KEYS = ("kd_relation_heads", "kd_relation_query_chunk")
_OFFLINE_CONFLICTS = {
  "kd_teacher_parameters_path": "the cache replaces the teacher",
  "kd_teachers": "the cache replaces the teachers (save_top_k_teacher_logits.py caches an ensemble as one cache)",
  "kd_top_p": "the cache holds a fixed top-k",
  "kd_use_other_bucket": "kd_offline_normalization chooses how the tail is treated",
  "kd_beta": "features are not cached",
}


def _changed(v: dict[str, Any], keys) -> list[str]:
  base = defaults()
  return [k for k in keys if v[k] != base[k]]


def _check_kd(v: dict[str, Any]) -> None:
  if not v["use_kd"]:
    stray = _changed(v, [k for k in v if k.startswith("kd_")])
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
    meaningless = _changed(v, _HARD_LABEL_NO_OPS)
    if meaningless:
      raise ConfigError(f"{meaningless[0]}: has no effect with kd_use_hard_labels (the teacher's argmax ignores it)")
  _check_divergence(v)
  _check_vocab(v)
  _check_ensemble(v)
  _check_on_policy(v)
  if not v["kd_teacher_parameters_path"] and (v["kd_teacher_model_name"] or v["kd_teacher_overrides"]):
    raise ConfigError(
      "kd_teacher_model_name: a teacher architecture needs kd_teacher_parameters_path "
      "(empty path = self-distillation from the student's own initial parameters)"
    )


_ON_POLICY_KEYS = ("kd_on_policy_max_new_tokens", "kd_on_policy_temperature", "kd_on_policy_divergence")


def _check_on_policy(v: dict[str, Any]) -> None:
  if not v["kd_on_policy_fraction"]:
    stray = _changed(v, _ON_POLICY_KEYS)
    if stray:
      raise ConfigError(f"{stray[0]}: has no effect with kd_on_policy_fraction=0 (on-policy KD is off)")
    return
  if v["kd_offline_data_dir"]:
    raise ConfigError("kd_on_policy_fraction: needs a live teacher to score the student's samples, not a cache")
  if v["kd_use_hard_labels"]:
    raise ConfigError("kd_on_policy_fraction: on-policy steps use kd_on_policy_divergence, not hard labels")
  if v["kd_on_policy_max_new_tokens"] >= v["max_target_length"]:
    raise ConfigError(
      f"kd_on_policy_max_new_tokens: {v['kd_on_policy_max_new_tokens']} leaves no prompt in "
      f"max_target_length={v['max_target_length']}"
    )
  if v["gradient_accumulation_steps"] > 1:
    raise ConfigError("kd_on_policy_fraction: not available with gradient_accumulation_steps > 1 (yet)")


def _check_vocab(v: dict[str, Any]) -> None:
  if v["kd_vocab_size"] < 0 or v["kd_vocab_size"] > v["vocab_size"]:
    raise ConfigError(f"kd_vocab_size: expected 0 to vocab_size ({v['vocab_size']}), got {v['kd_vocab_size']}")


def _check_divergence(v: dict[str, Any]) -> None:
  name = v["kd_divergence"]
  used = {name, v["kd_on_policy_divergence"]} if v["kd_on_policy_fraction"] else {name}
  if "jsd" not in used and _changed(v, ["kd_jsd_beta"]):
    raise ConfigError(f"kd_jsd_beta: has no effect with kd_divergence={name} (it is jsd's beta)")
  if not any(n.startswith("skew_") for n in used) and _changed(v, ["kd_skew_alpha"]):
    raise ConfigError(f"kd_skew_alpha: has no effect with kd_divergence={name} (it is the skew KLs' alpha)")
  if "mse" in used:
    _check_mse(v, name)
  if name != "forward_kl" and v["kd_offline_data_dir"] and v["kd_offline_normalization"] == "student_full":
    raise ConfigError(
      f"kd_offline_normalization: student_full is the cross-entropy form of forward KL; with kd_divergence={name} "
      "use other_bucket or renormalize_both"
    )


def _check_mse(v: dict[str, Any], name: str) -> None:
  """mse compares one live teacher's full logit vector (losses/logit_mse.py)."""
  if v["kd_offline_data_dir"]:
    raise ConfigError("kd_divergence: mse needs the teacher's full logits; a cache holds its top-k only")
  if v["kd_teachers"]:
    raise ConfigError("kd_divergence: mse compares one teacher's logits; an ensemble's target is a distribution")
  if v["kd_use_other_bucket"]:
    raise ConfigError("kd_use_other_bucket: mse compares logits, which have no OTHER bucket (prune without it)")
  if name == "mse":
    changed = _changed(v, ["kd_temperature", "kd_temperature_end", "kd_temperature_schedule"])
    if changed:
      raise ConfigError(f"{changed[0]}: has no effect with kd_divergence=mse (T^2 x MSE(s / T, t / T) = MSE(s, t))")


_SINGLE_TEACHER_KEYS = (
  "kd_teacher_parameters_path",
  "kd_teacher_model_name",
  "kd_teacher_overrides",
  "kd_teacher_dtype",
)


def _check_ensemble(v: dict[str, Any]) -> None:
  if not v["kd_teachers"]:
    if _changed(v, ["kd_ensemble"]):
      raise ConfigError("kd_ensemble: has no effect without kd_teachers (it says how several teachers combine)")
    return
  single = _changed(v, _SINGLE_TEACHER_KEYS)
  if single:
    raise ConfigError(f"{single[0]}: cannot be used with kd_teachers (each listed teacher names its own)")
  if uses_features(v):
    raise ConfigError(
      "kd_beta: feature distillation aligns with one teacher's layers; it is not available with kd_teachers"
    )


def _check_teacher(v: dict[str, Any]) -> None:
  if not v["use_kd"]:
    return
  for index, spec in enumerate(teacher_specs(v)):
    where = f"kd_teachers[{index}]" if v["kd_teachers"] else "kd_teacher_overrides"
    teacher = teacher_model_values(v, spec)
    if not v["kd_teacher_tokenizer_path"]:  # a teacher with its own tokenizer keeps its own vocabulary
      _check_teacher_vocab(v, teacher["vocab_size"], where)
    if teacher["num_query_heads"] % teacher["num_kv_heads"]:
      raise ConfigError(f"{where}: teacher num_query_heads must be a multiple of its num_kv_heads")
    check_attention_serves(v, f"{where}'s teacher", compute_dtype(spec.dtype, v["dtype"]), teacher["head_dim"])


def _check_teacher_vocab(v: dict[str, Any], teacher_vocab: int, where: str) -> None:
  shared = v["kd_vocab_size"]
  whose_teacher = "the teacher's" if where == "kd_teacher_overrides" else f"{where}'s"
  if shared:
    for whose, size in (("the student's", v["vocab_size"]), (whose_teacher, teacher_vocab)):
      if shared > size:
        raise ConfigError(f"kd_vocab_size: {shared} is more than {whose} vocab_size ({size})")
  elif teacher_vocab != v["vocab_size"]:
    raise ConfigError(
      f"{where}: teacher vocab_size {teacher_vocab} differs from the student's vocab_size "
      f"{v['vocab_size']}; with one tokenizer and differently padded embeddings set kd_vocab_size to its size"
    )


def _check_features(v: dict[str, Any]) -> None:
  if v["kd_beta"] == 0 and v["kd_beta_end"] > 0:
    raise ConfigError(
      "kd_beta: 0 with kd_beta_end > 0 would compile a step without features; start the schedule "
      "from a small positive value (e.g. kd_beta=1e-4)"
    )
  if not uses_features(v):
    stray = _changed(v, _FEATURE_KEYS)
    if stray:
      raise ConfigError(f"{stray[0]}: has no effect with kd_beta=0 (feature distillation is off)")
    return
  feature_layer_pairs(v)
  if v["kd_feature_source"] == "attention_relations":
    return _check_relations(v)
  stray = _changed(v, _RELATION_KEYS)
  if stray:
    raise ConfigError(f"{stray[0]}: has no effect with kd_feature_source={v['kd_feature_source']}")
  width = teacher_width(v)
  if not v["kd_feature_projection"] and width != v["emb_dim"]:
    raise ConfigError(
      f"kd_feature_projection: student width {v['emb_dim']} differs from teacher width "
      f"{width}; features can only be compared through a projection (set it true)"
    )


def _check_relations(v: dict[str, Any]) -> None:
  """Attention relations (losses/attention_relations.py): KL, no projection, widths the heads divide."""
  stray = _changed(v, ["kd_feature_loss_type", "kd_feature_projection"])
  if stray:
    raise ConfigError(f"{stray[0]}: has no effect with kd_feature_source=attention_relations (a KL, width-free)")
  heads = relation_heads(v)
  for what, width in relation_widths(v).items():
    if width % heads:
      raise ConfigError(
        f"kd_relation_heads: {heads} relation heads do not divide the {what} width {width} "
        "(choose a common divisor of all four widths)"
      )
  chunk, length = v["kd_relation_query_chunk"], v["max_target_length"]
  if chunk < 0 or (chunk and length % chunk and chunk < length):
    raise ConfigError(f"kd_relation_query_chunk: expected 0 or a divisor of max_target_length ({length}), got {chunk}")


def _check_offline_save_keys(v: dict[str, Any]) -> None:
  """The keys of save_top_k_teacher_logits.py (checked when kd_offline_output_dir is set)."""
  if not v["kd_offline_output_dir"]:
    return
  if not teacher_specs(v):
    raise ConfigError("kd_teacher_parameters_path: the teacher whose logits are cached must be given (or kd_teachers)")
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
  if v["kd_offline_batches_per_shard"] < 1:
    raise ConfigError("kd_offline_batches_per_shard: must be >= 1")


def _check_offline_run(v: dict[str, Any]) -> None:
  """Offline training: the cache replaces the teacher (whether it fits the run is a pre-flight check)."""
  if not v["kd_offline_data_dir"]:
    return
  for key, why in _OFFLINE_CONFLICTS.items():
    if v[key]:
      raise ConfigError(f"{key}: cannot be used with kd_offline_data_dir ({why})")


def validate_kd(values: dict[str, Any]) -> None:
  check_cross_tokenizer(values, _changed)
  _check_kd(values)
  _check_teacher(values)
  _check_features(values)
  if values["use_kd"]:
    _check_offline_save_keys(values)
    _check_offline_run(values)
