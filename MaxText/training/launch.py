"""What every training entry point runs: config -> pre-flight file checks -> Trainer -> run.

`MaxText/train.py`, `MaxText.sft_trainer` and `MaxText.train_distill` (and upstream MaxText's module
paths under `MaxText.trainers.post_train`) differ only in the yml they default to and the mode they set,
so they share this one function and one training loop. A user's mistake (a bad key, a missing or corrupt
file) ends as one line on stderr; a bug keeps its traceback.

The config and the pre-flight file checks run before the training stack (JAX, Flax, Orbax, Grain) is
imported: a config error comes back in a fraction of a second (tests/test_config.py checks that none of
it was imported).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from MaxText.config import ConfigError, UserError, load, silence_async_leftovers
from MaxText.config.loader import CONFIG_DIR, help_text, resolve_yml
from MaxText.config.platform import default_to_cpu_without_accelerator
from MaxText.config.saved_files import with_saved_model_keys
from MaxText.training import preflight


def _with_default_yml(args: Sequence[str], default_yml: str | None) -> list[str]:
  """Upstream's post-training modules take `key=value ...` alone, reading their own starter yml."""
  if default_yml and (not args or "=" in args[0]):
    return [resolve_yml(default_yml, CONFIG_DIR), *args]
  return list(args)


def _check_teacher(config) -> None:
  if not (config.kd_teacher_parameters_path or config.kd_teachers or config.kd_offline_data_dir):
    raise ConfigError(
      "teacher_overrides.load_parameters_path: the teacher's checkpoint is missing (set it, or "
      "kd_teacher_parameters_path; offline_data_dir trains from a cache instead)"
    )


def _check_eval_only(config) -> None:
  if not config.load_parameters_path:
    raise ConfigError("load_parameters_path: eval_only scores a saved model; name its checkpoint folder")
  if config.use_kd and not (config.kd_teacher_parameters_path or config.kd_teachers):
    raise ConfigError(
      "kd_teacher_parameters_path: eval_only with use_kd reports fidelity to a teacher; name its checkpoint "
      "(or kd_teachers)"
    )


def main(
  argv: Sequence[str],
  *,
  default_yml: str | None = None,
  forced: dict | None = None,
  require_teacher: bool = False,
  usage: str = "python MaxText/train.py base.yml [key=value ...]",
) -> int:
  """`argv` as sys.argv; `forced` keys are set after the command line's (the entry point's mode)."""
  default_to_cpu_without_accelerator()
  silence_async_leftovers()
  if "--help" in argv or "-h" in argv:
    print(f"usage: {usage}\n")
    print(help_text())
    return 0
  try:
    args = _with_default_yml(argv[1:], default_yml)
    config = load(args, forced)
    if require_teacher:
      _check_teacher(config)
    if config.eval_only:  # the saved model's own keys (a converted model, a teacher run) describe it
      _check_eval_only(config)
      config = with_saved_model_keys(args, config, forced)
    files = preflight.run(config)
    if not config.eval_only:
      preflight.check_run_folder(config)
  except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  import jax  # the training stack, once the config and its files are known to be good

  from MaxText.training import evaluation
  from MaxText.training.runtime import maybe_initialize_distributed
  from MaxText.training.trainer import Trainer

  maybe_initialize_distributed(config)
  if config.jax_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.jax_cache_dir)
  try:
    if config.eval_only:
      evaluation.evaluate_checkpoint(config)
    else:
      Trainer(config, files).run()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def sft(argv: Sequence[str], usage: str) -> int:
  """Upstream's SFT trainer: use_sft=true, configs/post_train/sft.yml when no yml is named."""
  return main(argv, default_yml="post_train/sft.yml", forced={"use_sft": True}, usage=usage)


def distill(argv: Sequence[str], usage: str) -> int:
  """Upstream's distillation trainer: use_kd=true with a teacher required, configs/post_train/distillation.yml
  when no yml is named."""
  return main(
    argv, default_yml="post_train/distillation.yml", forced={"use_kd": True}, require_teacher=True, usage=usage
  )
