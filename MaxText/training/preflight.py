"""The pre-flight step: the checks that read the user's files, run once after the keys are checked and
before anything is built or compiled. It returns what later steps need from those files.

- `tokenizer_path` and `load_parameters_path` exist;
- the teacher folder is a readable folder, and the model keys saved beside it (a run's config.json or
  a converted checkpoint's model_config.json) match the teacher's;
- an offline cache's manifest and shards are intact and were made for this run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import TYPE_CHECKING

from MaxText.config import storage
from MaxText.config.draft import draft_config
from MaxText.config.errors import ConfigError
from MaxText.config.model_keys import NOT_COMPARED
from MaxText.config.paths import check_exists, check_output_folder
from MaxText.config.saved_files import FULL_STATE_ITEMS, RUN_FILES, run_dir, saved_model_keys
from MaxText.config.views import MODEL_KEYS, teacher_model_values, teacher_specs

if TYPE_CHECKING:
  from MaxText.data.teacher_cache import CacheView


@dataclasses.dataclass(frozen=True)
class RunFiles:
  """What the pre-flight step read and later steps use."""

  cache: CacheView | None  # offline KD only


def _check_paths(config) -> None:
  for key in ("tokenizer_path", "load_parameters_path"):
    check_exists(key, getattr(config, key))
  if config.load_parameters_path:
    _refuse_upstream_checkpoint("load_parameters_path", config.load_parameters_path)
  if config.load_full_state_path:
    _check_full_state(config.load_full_state_path)


def _check_full_state(path: str) -> None:
  """A step folder of a run (`<run>/checkpoints/<step>`): parameters and optimizer state, under an integer name."""
  _refuse_upstream_checkpoint("load_full_state_path", path)
  if not storage.isdir(path):
    raise ConfigError(f"load_full_state_path: {path!r} does not exist or is not a folder")
  missing = [item for item in FULL_STATE_ITEMS if not storage.isdir(storage.join(path, item))]
  if missing or not storage.basename(path).isdigit():
    raise ConfigError(
      f"load_full_state_path: {path!r} is not a run's checkpoint step folder (<run>/checkpoints/<step>, holding "
      f"{' and '.join(FULL_STATE_ITEMS)}); for parameters alone use load_parameters_path"
    )


def _refuse_upstream_checkpoint(key: str, path: str) -> None:
  """A step folder of upstream MaxText's converter or trainer (`N/items`) holds another parameter tree."""
  if storage.isdir(storage.join(path, "items")) and not storage.isdir(storage.join(path, "params")):
    raise ConfigError(
      f"{key}: {path!r} is an upstream MaxText checkpoint (an Orbax 'items' tree), whose parameter layout is "
      "not this project's; convert the Hugging Face model with python -m MaxText.convert_hf_checkpoint and "
      "give the folder it writes (or a run's checkpoints/N)"
    )


def _check_teacher_folders(config) -> None:
  if not config.use_kd:
    return
  values = dataclasses.asdict(config)
  for index, spec in enumerate(teacher_specs(values)):
    prefix = f"kd_teachers[{index}]." if config.kd_teachers else "kd_teacher_"
    keys = (f"{prefix}parameters_path", f"{prefix}overrides", f"{prefix}model_name / {prefix}overrides")
    _check_teacher_folder(spec.parameters_path, teacher_model_values(values, spec), *keys)


def _check_teacher_folder(path: str, teacher: dict, key: str, overrides_key: str, fix: str) -> None:
  if not storage.isdir(path):
    raise ConfigError(f"{key}: {path!r} does not exist or is not a folder")
  if not storage.is_remote(path) and not os.access(path, os.R_OK | os.X_OK):
    raise ConfigError(f"{key}: {path!r} is not readable")
  _refuse_upstream_checkpoint(key, path)
  saved = saved_model_keys(path)
  if saved is None:
    return
  for name in MODEL_KEYS:
    if name in saved[1] and name not in NOT_COMPARED and saved[1][name] != teacher[name]:
      raise ConfigError(
        f"{overrides_key}: teacher {name}={teacher[name]!r} but the checkpoint at {storage.absolute(path)!r} "
        f"was trained with {name}={saved[1][name]!r} (set {fix})"
      )


def vocabulary_fingerprint(tokenizer_json: str) -> tuple[int, str] | None:
  """(size, sha256 of the sorted token -> id pairs) of a tokenizer.json, so that re-serialised files of one
  vocabulary agree; None when the file does not parse (building the tokenizer reports that, naming it)."""
  from tokenizers import Tokenizer

  try:
    vocab = Tokenizer.from_file(tokenizer_json).get_vocab(with_added_tokens=True)
  except Exception:  # noqa: BLE001 - `tokenizers` raises a bare Exception for a file it cannot parse
    return None
  digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
  return len(vocab), digest[:16]


def _teacher_tokenizer_files(config) -> list[tuple[str, str]]:
  """(key, tokenizer.json) of each teacher folder that carries its tokenizer (converted and pruned ones do)."""
  found = []
  for index, spec in enumerate(teacher_specs(dataclasses.asdict(config))):
    key = f"kd_teachers[{index}].parameters_path" if config.kd_teachers else "kd_teacher_parameters_path"
    path = storage.join(spec.parameters_path, "tokenizer.json")
    if storage.isfile(path):
      found.append((key, path))
  return found


def _check_teacher_tokenizers(config) -> None:
  """A teacher that carries its tokenizer must share the student's vocabulary: KD compares distributions
  over token ids."""
  if not (config.use_kd and config.tokenizer_type == "huggingface"):
    return
  teachers = _teacher_tokenizer_files(config)
  # cross-tokenizer KD: the teacher's tokenizer is kd_teacher_tokenizer_path, and a folder's must be it
  expected_key = "kd_teacher_tokenizer_path" if config.kd_teacher_tokenizer_path else "tokenizer_path"
  expected_file = config.kd_teacher_tokenizer_path or config.tokenizer_path
  if storage.isdir(expected_file):
    expected_file = storage.join(expected_file, "tokenizer.json")
  if not teachers or not storage.isfile(expected_file):
    return
  expected = vocabulary_fingerprint(expected_file)
  for key, path in teachers:
    teacher = vocabulary_fingerprint(path)
    if expected and teacher and teacher != expected:
      whose = "the student's " if expected_key == "tokenizer_path" else ""
      advice = "KD needs one tokenizer (or kd_teacher_tokenizer_path: cross-tokenizer KD)"
      raise ConfigError(
        f"{key}: the teacher's tokenizer ({teacher[0]} tokens, vocabulary {teacher[1]}) is not {whose}"
        f"{expected_key} ({expected[0]} tokens, vocabulary {expected[1]}); "
        + (advice if expected_key == "tokenizer_path" else "the teacher folder's own tokenizer must be that one")
      )


def _open_cache(config) -> CacheView | None:
  if not (config.use_kd and config.kd_offline_data_dir):
    return None
  from MaxText.data import teacher_cache  # NumPy and Grain: only when there is a cache to read

  try:
    return teacher_cache.open_for_run(config)
  except (teacher_cache.CacheError, OSError, json.JSONDecodeError) as e:
    raise ConfigError(str(e)) from None


def run(config) -> RunFiles:
  """All file checks of a run (or of the offline save job); raises ConfigError naming the key."""
  _check_paths(config)
  _check_teacher_folders(config)
  _check_teacher_tokenizers(config)
  draft_config(config)  # decode_draft_parameters_path: there, its model keys saved, the model's tokenizer
  return RunFiles(cache=_open_cache(config))


def check_run_folder(config) -> None:
  """The training job's output: a new folder, or one holding only this run's own outputs (a resume)."""
  folder = run_dir(config)
  check_output_folder("base_output_directory", folder, RUN_FILES)
  saved_path = storage.join(folder, "config.json")
  if not storage.isfile(saved_path):
    return
  try:
    with storage.open_file(saved_path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"run_name: {saved_path!r} cannot be read ({e}); use another run_name") from None
  for key in MODEL_KEYS:
    if key in saved and key not in NOT_COMPARED and saved[key] != getattr(config, key):
      raise ConfigError(
        f"run_name: {folder!r} holds another run ({key}={saved[key]!r} there, {getattr(config, key)!r} here); "
        "use another run_name or base_output_directory"
      )
