"""Typed views of a validated Config, each built once: the teacher's config and the feature alignment.

Pure functions of the keys (and the model presets shipped with the code); no user file is read here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from MaxText.config.errors import ConfigError
from MaxText.config.loader import check_known, coerce, defaults, load_model_preset, parse_overrides
from MaxText.config.model_keys import MODEL_KEYS
from MaxText.config.teachers import TeacherSpec

# What the decoder reads: the architecture plus how it computes (not the run's keys).
_MODEL_VIEW_KEYS = (*MODEL_KEYS, "dtype", "remat_policy", "attention", "max_segments_per_seq", "mlp_sequence_chunks")
ModelConfig = dataclasses.make_dataclass(
  "ModelConfig", [(key, type(defaults()[key])) for key in _MODEL_VIEW_KEYS], frozen=True
)


def model_config(config) -> Any:
  """The decoder's view of a Config (or of another ModelConfig): its model keys only."""
  return ModelConfig(**{key: getattr(config, key) for key in _MODEL_VIEW_KEYS})


def eval_data_config(config) -> Any | None:
  """The config with the eval data set in the data keys (eval_dataset_path, its type and column, each
  defaulting to the training set's); None when eval holds out a share of dataset_path instead."""
  if not config.eval_dataset_path:
    return None
  return dataclasses.replace(
    config,
    dataset_path=config.eval_dataset_path,
    dataset_type=config.eval_dataset_type or config.dataset_type,
    data_column=config.eval_data_column or config.data_column,
    eval_dataset_path="",
  )


def teacher_specs(v: dict[str, Any]) -> tuple[TeacherSpec, ...]:
  """The run's teachers: the kd_teachers ensemble, or the one kd_teacher_* teacher (none when self-distilling)."""
  if v["kd_teachers"]:
    return v["kd_teachers"]
  if not v["kd_teacher_parameters_path"]:
    return ()
  keys = ("kd_teacher_parameters_path", "kd_teacher_model_name", "kd_teacher_overrides", "kd_teacher_dtype")
  return (TeacherSpec("teacher", *(v[key] for key in keys)),)


def _overrides_key(v: dict[str, Any], spec: TeacherSpec) -> str:
  """The key a teacher's overrides came from, for error messages."""
  if not v["kd_teachers"]:
    return "kd_teacher_overrides"
  return f"kd_teachers[{[s.name for s in v['kd_teachers']].index(spec.name)}].overrides"


def teacher_model_values(v: dict[str, Any], spec: TeacherSpec | None = None) -> dict[str, Any]:
  """A teacher's model keys: base.yml < its preset < its overrides (student CLI keys never leak).

  `spec` None: the single kd_teacher_* teacher."""
  spec = spec or TeacherSpec("teacher", "", v["kd_teacher_model_name"], v["kd_teacher_overrides"])
  base = defaults()
  preset = load_model_preset(spec.model_name or v["model_name"])
  where = _overrides_key(v, spec)
  overrides = parse_overrides([p for p in spec.overrides.split(",") if p.strip()], where)
  for key in overrides:
    check_known(key, list(MODEL_KEYS), where)
  model = {k: base[k] for k in MODEL_KEYS}
  for layer in (preset, overrides):
    for key, value in layer.items():
      if key in MODEL_KEYS:
        model[key] = coerce(key, value, base[key])
  return model


def teacher_width(v: dict[str, Any]) -> int:
  return teacher_model_values(v)["emb_dim"] if v["kd_teacher_parameters_path"] else v["emb_dim"]


def kd_vocab(config) -> int:
  """How many token ids the KD term compares (both models' rows beyond it never receive mass)."""
  return config.kd_vocab_size or config.vocab_size


def compute_dtype(teacher_dtype: str, run_dtype: str) -> str:
  """A teacher's compute dtype: its own, else the run's; an int8 teacher (weights held int8) computes in
  the run's dtype."""
  return run_dtype if teacher_dtype in ("", "int8") else teacher_dtype


def teacher_is_int8(config, spec: TeacherSpec | None = None) -> bool:
  """Whether a teacher's matmul weights are held as int8 (`kd_teacher_dtype` or the member's `dtype`)."""
  return (spec.dtype if spec is not None else config.kd_teacher_dtype) == "int8"


def teacher_config(config, spec: TeacherSpec | None = None) -> Any:
  """A teacher's Config: the student's run keys with the teacher's own model keys.

  `spec` None: the single kd_teacher_* teacher (the student's own Config when self-distilling)."""
  values = dataclasses.asdict(config)
  if spec is None:
    specs = teacher_specs(values)
    if not specs:
      return config
    spec = specs[0]
  values.update(teacher_model_values(values, spec))
  values.update(
    model_name=spec.model_name or config.model_name,
    remat_policy="none",
    dtype=compute_dtype(spec.dtype, config.dtype),
    kd_beta=0.0,  # the teacher is not trained: no feature term of its own
    kd_beta_end=-1.0,
  )
  return type(config)(**values)


EMBEDDING_LAYER = -1  # kd_layer_indices' "embedding" (kd_feature_source=residual): the embedding output


def _indices(key: str, raw: str, embedding: bool) -> list[int] | None:
  if not raw.strip():
    return None
  words = [x.strip() for x in raw.split(",")]
  try:
    return [EMBEDDING_LAYER if embedding and w == "embedding" else int(w) for w in words]
  except ValueError:
    also = ' or "embedding"' if embedding else ""
    raise ConfigError(f"{key}: expected comma-separated layer numbers{also}, got {raw!r}") from None


def _teacher_model(v: dict[str, Any]) -> dict[str, Any]:
  return teacher_model_values(v) if v["kd_teacher_parameters_path"] else v


def feature_layer_pairs(v: dict[str, Any]) -> list[tuple[int, int]]:
  """(student layer, teacher layer) pairs aligned by the feature term, checked against both depths."""
  student_depth = v["num_decoder_layers"]
  teacher_depth = _teacher_model(v)["num_decoder_layers"]
  embedding = v["kd_feature_source"] == "residual"
  student = _indices("kd_layer_indices", v["kd_layer_indices"], embedding)
  if student is None:  # evenly spaced, ending at the last layer
    count = min(4, student_depth)
    student = [round((i + 1) * student_depth / count) - 1 for i in range(count)]
  matched = _indices("kd_teacher_layer_indices", v["kd_teacher_layer_indices"], embedding)
  if matched is None:  # the same relative depth (the embedding output to the teacher's)
    matched = [s if s == EMBEDDING_LAYER else round((s + 1) * teacher_depth / student_depth) - 1 for s in student]
  if len(matched) != len(student):
    raise ConfigError(f"kd_teacher_layer_indices: {len(matched)} layers given for {len(student)} student layers")
  lowest = EMBEDDING_LAYER if embedding else 0
  for key, layers, depth in (
    ("kd_layer_indices", student, student_depth),
    ("kd_teacher_layer_indices", matched, teacher_depth),
  ):
    bad = [i for i in layers if not lowest <= i < depth]
    if bad:
      raise ConfigError(f"{key}: layer {bad[0]} is out of range for a {depth}-layer model")
  return list(zip(student, matched, strict=True))


def uses_features(v: dict[str, Any]) -> bool:
  return bool(v["use_kd"]) and (v["kd_beta"] > 0 or v["kd_beta_end"] > 0)


def relation_widths(v: dict[str, Any]) -> dict[str, int]:
  """The widths attention relations are split into relation heads from: query and key/value, per model."""
  teacher = _teacher_model(v)
  return {
    f"{who} {what}": model[heads] * model["head_dim"]
    for who, model in (("student", v), ("teacher", teacher))
    for what, heads in (("query", "num_query_heads"), ("key/value", "num_kv_heads"))
  }


def relation_heads(v: dict[str, Any]) -> int:
  """kd_relation_heads, or (0) the greatest common divisor of the student's and the teacher's KV head counts."""
  return v["kd_relation_heads"] or math.gcd(v["num_kv_heads"], _teacher_model(v)["num_kv_heads"])


@dataclasses.dataclass(frozen=True)
class FeatureAlignment:
  """What the feature term compares: layer pairs, which features and how, and the learned projection's shape."""

  student_layers: tuple[int, ...]  # EMBEDDING_LAYER: the embedding output (residual features)
  teacher_layers: tuple[int, ...]
  loss_type: str  # cosine | l2 (attention_output, residual); attention_relations compare by KL
  projection_shape: tuple[int, int, int] | None  # (aligned layers, student width, teacher width); None = direct
  source: str = "attention_output"  # kd_feature_source
  relation_heads: int = 0  # attention_relations: heads the concatenated q / k / v are re-split into
  relation_query_chunk: int = 0  # attention_relations: query positions per block (0 = all at once)


def feature_alignment(config) -> FeatureAlignment | None:
  """The feature term of a run, or None when it is off (kd_beta = 0: nothing is extracted)."""
  v = dataclasses.asdict(config)
  if not uses_features(v):
    return None
  pairs = feature_layer_pairs(v)
  relations = config.kd_feature_source == "attention_relations"
  projected = config.kd_feature_projection and not relations
  shape = (len(pairs), config.emb_dim, teacher_width(v)) if projected else None
  return FeatureAlignment(
    tuple(s for s, _ in pairs),
    tuple(t for _, t in pairs),
    config.kd_feature_loss_type,
    shape,
    config.kd_feature_source,
    relation_heads(v) if relations else 0,
    config.kd_relation_query_chunk if relations else 0,
  )
