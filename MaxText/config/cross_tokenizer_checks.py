"""Checks of cross-tokenizer KD (kd_teacher_tokenizer_path): what it needs and what it is not built for."""

from __future__ import annotations

from typing import Any

from MaxText.config.errors import ConfigError, choices_text

CROSS_KEYS = ("kd_cross_tokenizer_loss", "kd_gold_exact_weight", "kd_gold_uld_weight", "kd_teacher_max_target_length")
LOSSES = ("uld", "gold")
# key -> why it is refused with a teacher that has its own tokenizer
_REFUSED = {
  "kd_offline_data_dir": "a top-k cache stores teacher ids of one vocabulary; the two token streams are not cached",
  "kd_on_policy_fraction": "on-policy steps would need the student's samples re-tokenized for the teacher",
  "kd_teachers": "an ensemble's members would each need their own token stream",
  "kd_beta": "feature alignment pairs positions of one token stream",
  "kd_top_k": "pruning applies to one vocabulary; ULD and the projected KL use the whole distributions",
  "kd_top_p": "pruning applies to one vocabulary; ULD and the projected KL use the whole distributions",
  "kd_use_hard_labels": "the teacher's argmax is a teacher id; kd_cross_tokenizer_loss chooses the term",
  "kd_vocab_size": "each model keeps its own vocabulary",
}


def check_cross_tokenizer(v: dict[str, Any], changed) -> None:
  """`changed(v, keys)`: the keys among `keys` that differ from base.yml."""
  if not v["kd_teacher_tokenizer_path"]:
    stray = changed(v, CROSS_KEYS)
    if stray:
      raise ConfigError(f"{stray[0]}: has no effect without kd_teacher_tokenizer_path (cross-tokenizer KD is off)")
    return
  if not v["use_kd"]:
    raise ConfigError("kd_teacher_tokenizer_path: set but use_kd is false (set use_kd=true)")
  if v["tokenizer_type"] != "huggingface":
    raise ConfigError(
      f"tokenizer_type: cross-tokenizer KD aligns tokens by their character offsets, which only a Hugging Face "
      f"tokenizer.json gives (tokenizer_type=huggingface); got {v['tokenizer_type']!r}"
    )
  if not v["kd_teacher_parameters_path"]:
    raise ConfigError("kd_teacher_parameters_path: a teacher with its own tokenizer needs its own checkpoint")
  if v["dataset_type"] in ("synthetic", "array_record"):
    raise ConfigError(
      f"dataset_type: cross-tokenizer KD tokenizes text with both tokenizers; {v['dataset_type']!r} holds no text"
    )
  for key, why in _REFUSED.items():
    if v[key]:
      raise ConfigError(f"{key}: cannot be used with kd_teacher_tokenizer_path ({why})")
  if v["kd_divergence"] != "forward_kl":
    raise ConfigError("kd_divergence: with kd_teacher_tokenizer_path the term is kd_cross_tokenizer_loss's")
  if v["kd_cross_tokenizer_loss"] not in LOSSES:
    got = v["kd_cross_tokenizer_loss"]
    raise ConfigError(f"kd_cross_tokenizer_loss: expected one of {choices_text(LOSSES)}, got {got!r}")
  for key in ("kd_gold_exact_weight", "kd_gold_uld_weight"):
    if v[key] < 0:
      raise ConfigError(f"{key}: must be >= 0, got {v[key]}")
  if v["kd_teacher_max_target_length"] < 0:
    raise ConfigError(f"kd_teacher_max_target_length: must be >= 0, got {v['kd_teacher_max_target_length']}")
