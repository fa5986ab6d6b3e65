"""`dataset_mixture`: several training data sets mixed by weight, each with its own type and column.

In a yml:

  dataset_mixture:
    - {name: plays, path: data/plays, weight: 0.7, type: text}
    - {name: docs, path: 'data/docs/*.parquet', weight: 0.3, type: parquet, column: body}

on the command line YAML's flow form, `dataset_mixture='[{path: a, weight: 3}, {path: b}]'`, or upstream
MaxText's Grain form in `dataset_path`, `dataset_path='a/*.parquet,0.7;b/*.parquet,0.3'` (each entry
files and a weight, the run's dataset_type and column). Each entry reads like `dataset_path` with its
`type` ("" = dataset_type) and `column` ("" = the run's data_column, or train_data_columns with
use_sft); `weight` > 0 (normalised to sum to 1) is the share of examples (windows of text, or
conversations) drawn from it; `name` (default the path's stem) names its eval metrics. With use_sft a
jsonl/parquet/arrow source holds conversations (the loss on the assistant's tokens); a text or arrayrecord
source there is plain text cut into windows whose every token is a target, so that, for example, a KD
student matches its teacher on text as well as on chat (the KD term needs no teacher-written text).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, NamedTuple

from MaxText.config.entries import check_fields, check_name, parse_entries, positive_weight
from MaxText.config.errors import ConfigError


class SourceSpec(NamedTuple):
  """One data set of a mixture, as the user wrote it (a NamedTuple: hashable, survives dataclasses.asdict)."""

  name: str
  path: str
  weight: float = 1.0
  type: str = ""  # "" = dataset_type
  column: str = ""  # "" = data_column (train_data_columns with use_sft)


def _default_name(path: str) -> str:
  first = path.split(",")[0].rstrip("/")
  stem = os.path.basename(first).split(".")[0].replace("*", "") or "source"
  return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)


def _entry(index: int, raw: Any) -> SourceSpec:
  where = f"dataset_mixture[{index}]"
  check_fields(where, raw, SourceSpec._fields, "{path: FILES, weight: 1.0}")
  path = raw.get("path")
  if not isinstance(path, str) or not path.strip():
    raise ConfigError(f"{where}.path: every source needs its files (a folder, a file, a glob)")
  name = str(raw.get("name", "")) or _default_name(path)
  check_name(where, name)
  weight = positive_weight(where, raw.get("weight", 1.0))
  return SourceSpec(name, path, weight, str(raw.get("type", "")), str(raw.get("column", "")))


def parse_mixture(value: Any) -> tuple[SourceSpec, ...]:
  """The checked entries of `dataset_mixture` (a list of mappings; parsed entries pass through)."""
  return parse_entries("dataset_mixture", value, SourceSpec, _entry, "sources ([{path: FILES, weight: 1}, ...])")


def _weighted_paths(dataset_path: str) -> list[dict]:
  """Upstream's `files,weight;files,weight` as dataset_mixture entries."""
  entries = []
  for index, part in enumerate(p.strip() for p in dataset_path.split(";") if p.strip()):
    files, comma, weight = part.rpartition(",")
    if not comma or not files.strip():
      raise ConfigError(f"dataset_path: mixture entry {index} {part!r} is not 'files,weight'")
    entries.append({"path": files.strip(), "weight": positive_weight(f"dataset_path entry {index}", weight.strip())})
  return entries


def resolve(values: dict[str, Any]) -> dict[str, Any]:
  """A `dataset_path` in upstream's weighted form moves into dataset_mixture (one representation after load)."""
  if ";" not in values["dataset_path"]:
    return values
  if values["dataset_mixture"]:
    raise ConfigError("dataset_path: a weighted mixture ('files,weight;...') and dataset_mixture both given; give one")
  values["dataset_mixture"] = parse_mixture(_weighted_paths(values["dataset_path"]))
  values["dataset_path"] = ""
  return values


def normalized_weights(specs: tuple[SourceSpec, ...]) -> dict[str, float]:
  total = sum(spec.weight for spec in specs)
  return {spec.name: spec.weight / total for spec in specs}


TOKEN_TYPES = ("text", "arrayrecord")  # sources of token windows, never conversations


def source_config(config, spec: SourceSpec):
  """The run's Config reading one source alone (its path, type and column; no mixture, no separate eval set).
  A text source of a use_sft mixture reads as text (use_sft off for it alone)."""
  kind = spec.type or config.dataset_type
  sft = config.use_sft and kind not in TOKEN_TYPES
  column = "train_data_columns" if sft else "data_column"
  return dataclasses.replace(
    config,
    dataset_path=spec.path,
    dataset_type=kind,
    dataset_mixture=(),
    use_sft=sft,
    **{column: spec.column or getattr(config, column)},
  )
