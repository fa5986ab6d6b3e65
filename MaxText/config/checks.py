"""Checks of the values of the run's keys (ranges, choices, relations); no file is read here."""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from typing import Any

from MaxText.config import mixture
from MaxText.config.errors import ConfigError, choices_text
from MaxText.config.paths import PATH_KEYS, check_scheme


def _positive(v):
  return v > 0


def _non_negative(v):
  return v >= 0


def _fraction(v):
  return 0.0 <= v <= 1.0


def _axis(v):
  return v == -1 or v >= 1


_ONE_OF = {
  "dataset_type": ("synthetic", "text", "jsonl", "parquet", "arrow", "arrayrecord"),
  "eval_dataset_type": ("", "text", "jsonl", "parquet", "arrow", "arrayrecord"),
  "tokenizer_type": ("byte", "sentencepiece", "huggingface"),
  "dtype": ("bfloat16", "float32", "float16"),
  "weight_dtype": ("bfloat16", "float32"),
  "remat_policy": ("auto", "none", "full", "save_dots"),
  "attention": ("autoselect", "dot_product", "flash", "splash", "cudnn"),
  "kd_alpha_schedule": ("constant", "linear", "cosine"),
  "kd_temperature_schedule": ("constant", "linear", "cosine"),
  "kd_beta_schedule": ("constant", "linear", "cosine"),
  "kd_feature_loss_type": ("cosine", "l2"),
  "kd_feature_source": ("attention_output", "residual", "attention_relations"),
  "kd_teacher_dtype": ("", "bfloat16", "float32", "float16", "int8"),
  "kd_ensemble": ("probs", "logprobs"),
  "kd_offline_normalization": ("other_bucket", "renormalize_both", "student_full"),
  "kd_offline_logits_dtype": ("bfloat16", "float32"),
  "kd_offline_format": ("compact", "float"),
  "prune_layer_metric": ("cosine", "loss"),
  "eval_sampling": ("spread", "start"),
  "decode_sampling_strategy": ("greedy", "weighted", "topk", "nucleus"),
  "kd_divergence": ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl", "mse"),
  "kd_on_policy_divergence": ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl", "mse"),
}

_CHECKS: list[tuple[str, Callable[[Any], bool], str]] = [
  ("eval_steps", lambda v: v == -1 or v >= 1, "a positive integer, or -1 (the whole eval set)"),
  ("kd_offline_value_bits", lambda v: 2 <= v <= 8, "an integer from 2 to 8"),
  ("mlp_sequence_chunks", _non_negative, "a positive integer, or 0 (auto: pieces of at most 2048 tokens)"),
  *[
    (k, _positive, "a positive integer")
    for k in (
      "steps",
      "vocab_size",
      "emb_dim",
      "num_decoder_layers",
      "num_query_heads",
      "num_kv_heads",
      "head_dim",
      "mlp_dim",
      "max_target_length",
      "max_segments_per_seq",
      "log_period",
      "loss_chunk_size",
      "checkpoint_period",
      "max_to_keep",
      "gradient_accumulation_steps",
      "prune_calibration_batches",
      "pretokenize_documents_per_shard",
      "max_prefill_predict_length",
      "decode_max_new_tokens",
      "generation_samples_per_prompt",
      "generation_prompts_per_shard",
      "generation_instruction_max_tokens",
      "generation_instruction_min_words",
      "decode_draft_tokens",
    )
  ],
  *[
    (k, _positive, "a positive number")
    for k in (
      "learning_rate",
      "per_device_batch_size",
      "rope_theta",
      "normalization_layer_epsilon",
      "init_std",
      "kd_temperature",
      "decode_sampling_temperature",
      "kd_on_policy_temperature",
      "kd_on_policy_max_new_tokens",
      "generation_instruction_temperature",
    )
  ],
  *[
    (k, _non_negative, "a number >= 0")
    for k in (
      "adam_weight_decay",
      "gradient_clipping_threshold",
      "z_loss_multiplier",
      "eval_interval",
      "eval_tasks_limit",
      "rope_scaling_factor",
      "adam_eps",
      "grain_worker_count",
      "data_shuffle_buffer_size",
      "profiler_steps",
      "skip_first_n_steps_for_profiler",
      "kd_top_k",
      "prune_num_layers",
      "prune_mlp_dim",
      "prune_num_query_heads",
      "prune_emb_dim",
      "decode_sampling_top_k",
      "generation_num_instructions",
    )
  ],
  *[
    (k, _fraction, "a value in [0, 1]")
    for k in (
      "warmup_steps_fraction",
      "cosine_learning_rate_final_fraction",
      "eval_fraction",
      "kd_alpha",
      "kd_top_p",
      "kd_jsd_beta",
      "kd_on_policy_fraction",
    )
  ],
  ("kd_alpha_end", lambda v: v == -1.0 or 0.0 <= v <= 1.0, "a value in [0, 1] (or -1 = unset)"),
  ("kd_skew_alpha", lambda v: 0.0 <= v < 1.0, "a value in [0, 1) (1 would compare a distribution with itself)"),
  ("kd_beta", _non_negative, "a number >= 0"),
  *[
    (k, lambda v: 0.0 < v <= 1.0, "a value in (0, 1]")
    for k in ("decode_sampling_nucleus_p", "generation_instruction_top_p")
  ],
  ("generation_dedup_threshold", lambda v: 0.0 < v <= 1.0, "a value in (0, 1] (1 drops exact repeats only)"),
  ("generation_heldout_fraction", lambda v: 0.0 <= v < 1.0, "a value in [0, 1)"),
  ("kd_beta_end", lambda v: v == -1.0 or v >= 0, "a number >= 0 (or -1 = unset)"),
  ("kd_temperature_end", lambda v: v == -1.0 or v > 0, "a positive number (or -1 = unset)"),
  *[(k, lambda v: 0.0 <= v < 1.0, "a value in [0, 1)") for k in ("adam_b1", "adam_b2")],
  *[
    (f"{p}_{a}_parallelism", _axis, "-1 (fill) or a positive integer")
    for p in ("ici", "dcn")
    for a in ("data", "fsdp", "tensor")
  ],
]


_CONVERSATION_TYPES = ("jsonl", "parquet", "arrow")  # record files with named columns (SFT reads these)


def _check_eval_data(v: dict[str, Any]) -> None:
  if not v["eval_dataset_path"]:
    for key in ("eval_dataset_type", "eval_data_column"):
      if v[key]:
        raise ConfigError(f"{key}: {v[key]!r} describes eval_dataset_path, which is empty")
    return
  if v["dataset_type"] == "synthetic":
    raise ConfigError("eval_dataset_path: synthetic data has its own eval stream; drop eval_dataset_path")
  if v["use_sft"] and v["eval_dataset_type"] not in ("", *_CONVERSATION_TYPES):
    raise ConfigError(
      f"eval_dataset_type: use_sft reads jsonl, parquet or arrow conversations, got {v['eval_dataset_type']}"
    )


_MIXTURE_CONFLICTS = {
  "dataset_path": "the mixture names every source's files",
  "eval_dataset_path": "each source holds out eval_fraction of its documents, scored per source",
  "kd_offline_data_dir": "a teacher cache records one data set's batches",
  "kd_offline_output_dir": "a teacher cache records one data set's batches",
}


def _check_mixture(v: dict[str, Any]) -> None:
  """dataset_mixture: each source's type is one the run reads, nothing it replaces is set."""
  for key, why in _MIXTURE_CONFLICTS.items():
    if v[key]:
      raise ConfigError(f"{key}: cannot be used with dataset_mixture ({why})")
  if v["dataset_type"] == "synthetic":
    raise ConfigError("dataset_type: synthetic data cannot be mixed (dataset_mixture names real data sets)")
  allowed = ("text", *_CONVERSATION_TYPES, "arrayrecord")
  for index, spec in enumerate(v["dataset_mixture"]):
    kind = spec.type or v["dataset_type"]
    if kind not in allowed:
      raise ConfigError(f"dataset_mixture[{index}].type: {kind!r}; this run reads {', '.join(allowed)}")
    if v["use_sft"] and kind in mixture.TOKEN_TYPES and v["kd_teacher_tokenizer_path"]:
      raise ConfigError(
        f"dataset_mixture[{index}].type: {kind!r} text in a use_sft mixture is not built for cross-tokenizer KD "
        "(kd_teacher_tokenizer_path); give conversation sources only"
      )
    for part in spec.path.split(","):
      check_scheme(f"dataset_mixture[{index}].path", part)


def _check_eval_tasks(v: dict[str, Any]) -> None:
  if not v["eval_tasks"]:
    return
  if not v["eval_interval"] or v["eval_only"]:
    raise ConfigError(
      "eval_tasks: scored at a training run's eval steps (set eval_interval); for a saved model run "
      "python -m MaxText.run_lm_eval"
    )
  if importlib.util.find_spec("lm_eval") is None:
    raise ConfigError("eval_tasks: lm-evaluation-harness is not installed (pip install -e '.[eval]')")
  if v["eval_tasks_path"] and not os.path.isdir(v["eval_tasks_path"]):
    raise ConfigError(f"eval_tasks_path: {v['eval_tasks_path']!r} is not a folder of lm-eval task YAMLs")


def _check_relations(v: dict[str, Any]) -> None:
  _check_eval_tasks(v)
  if v["num_query_heads"] % v["num_kv_heads"]:
    raise ConfigError(f"num_query_heads: {v['num_query_heads']} must be a multiple of num_kv_heads={v['num_kv_heads']}")
  if v["rope_scaling_factor"] and v["rope_high_freq_factor"] <= v["rope_low_freq_factor"]:
    raise ConfigError("rope_high_freq_factor: must be larger than rope_low_freq_factor when RoPE scaling is on")
  if v["dataset_mixture"]:
    _check_mixture(v)
  elif v["dataset_type"] in (*_CONVERSATION_TYPES, "arrayrecord") and not v["dataset_path"]:
    raise ConfigError(f"dataset_path: required for dataset_type={v['dataset_type']}")
  if v["tokenizer_type"] != "byte" and not v["tokenizer_path"]:
    raise ConfigError(f"tokenizer_path: required for tokenizer_type={v['tokenizer_type']}")
  check_attention_serves(v, "the student", v["dtype"], v["head_dim"])
  _check_decode(v)
  _check_eval_data(v)
  if v["load_full_state_path"] and (v["load_parameters_path"] or v["eval_only"]):
    other = "load_parameters_path" if v["load_parameters_path"] else "eval_only"
    raise ConfigError(f"load_full_state_path: exclusive with {other} (a full state starts a training run)")
  if v["use_sft"] and v["dataset_type"] not in _CONVERSATION_TYPES and not v["dataset_mixture"]:
    raise ConfigError(
      f"dataset_type: use_sft reads conversations from jsonl, parquet or arrow, got {v['dataset_type']}"
    )
  if v["use_sft"] and v["tokenizer_type"] != "huggingface":
    raise ConfigError("tokenizer_type: use_sft needs a huggingface tokenizer folder with a chat_template")


# Attention kernels that run on one platform only (the others run everywhere).
KERNEL_PLATFORMS = {"splash": "tpu", "cudnn": "gpu"}
CUDNN_MAX_HEAD_DIM = 128


def cudnn_refusal(dtype: str, head_dim: int) -> str | None:
  """Why cuDNN's fused attention cannot serve a model of this compute dtype and head width, or None."""
  if dtype not in ("bfloat16", "float16"):
    return f"cuDNN's fused attention needs dtype bfloat16 or float16, got {dtype}"
  if head_dim > CUDNN_MAX_HEAD_DIM or head_dim % 8:
    return f"cuDNN's fused attention needs head_dim a multiple of 8 up to {CUDNN_MAX_HEAD_DIM}, got {head_dim}"
  return None


def check_attention_serves(v: dict[str, Any], who: str, dtype: str, head_dim: int) -> None:
  """The kernel named by `attention` must serve the student and every teacher (autoselect always does)."""
  reason = cudnn_refusal(dtype, head_dim) if v["attention"] == "cudnn" else None
  if reason:
    raise ConfigError(f"attention: cudnn cannot serve {who}: {reason}; use flash or autoselect")


def check_attention_platform(kernel: str, platform: str) -> None:
  """A platform-specific kernel on other devices is refused before anything is compiled."""
  needed = KERNEL_PLATFORMS.get(kernel)
  if needed and platform != needed:
    raise ConfigError(
      f"attention: {kernel} runs on {needed.upper()} only and this run's devices are {platform}; "
      "use autoselect, flash or dot_product"
    )


def _check_decode(v: dict[str, Any]) -> None:
  strategy = v["decode_sampling_strategy"]
  if strategy == "topk" and not 1 <= v["decode_sampling_top_k"] <= v["vocab_size"]:
    raise ConfigError(
      f"decode_sampling_top_k: topk needs 1..vocab_size ({v['vocab_size']}), got {v['decode_sampling_top_k']}"
    )
  if strategy != "topk" and v["decode_sampling_top_k"]:
    raise ConfigError(f"decode_sampling_top_k: has no effect with decode_sampling_strategy={strategy} (use topk)")
  if strategy != "nucleus" and v["decode_sampling_nucleus_p"] != 1.0:
    raise ConfigError(
      f"decode_sampling_nucleus_p: has no effect with decode_sampling_strategy={strategy} (use nucleus)"
    )
  if strategy == "greedy" and v["decode_sampling_temperature"] != 1.0:
    raise ConfigError("decode_sampling_temperature: has no effect with greedy decoding (argmax ignores it)")
  try:
    [int(t) for t in v["decode_stop_tokens"].split(",") if t.strip()]
  except ValueError:
    raise ConfigError(
      f"decode_stop_tokens: expected comma-separated token ids, got {v['decode_stop_tokens']!r}"
    ) from None


def validate_values(values: dict[str, Any]) -> None:
  """Types are already right (the loader coerced them); these are the checks on the values themselves."""
  for key, choices in _ONE_OF.items():
    if values[key] not in choices:
      raise ConfigError(f"{key}: expected one of {choices_text(choices)}, got {values[key]!r}")
  for key, ok, expected in _CHECKS:
    value = values[key]
    if isinstance(value, float) and not math.isfinite(value) or not ok(value):
      raise ConfigError(f"{key}: expected {expected}, got {value!r}")
  _check_relations(values)
  for key in PATH_KEYS:
    for part in values[key].split(","):  # dataset_path may list several
      check_scheme(key, part)


def check_prune_targets(config) -> None:
  """Refuses, by key, a target the model cannot be pruned to (prune_student.py, before anything is read)."""
  current = {
    "prune_num_layers": config.num_decoder_layers,
    "prune_mlp_dim": config.mlp_dim,
    "prune_num_query_heads": config.num_query_heads,
    "prune_emb_dim": config.emb_dim,
  }
  for key, size in current.items():
    if getattr(config, key) > size:
      raise ConfigError(f"{key}: {getattr(config, key)} is more than the model has ({size})")
  per_group = config.num_query_heads // config.num_kv_heads
  if config.prune_num_query_heads % per_group:
    raise ConfigError(
      f"prune_num_query_heads: {config.prune_num_query_heads} is not a whole number of KV groups "
      f"({per_group} query heads each)"
    )
