"""Entry point: `python MaxText/train.py base.yml key=value ...` (`--help` lists every key).

config -> pre-flight file checks -> Trainer (mesh, state, teacher, input, jitted step) -> run.
A user's mistake (a bad key, a missing or corrupt file) ends as one line on stderr; a bug keeps its traceback.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make `import MaxText` work from a checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from MaxText import config as config_lib  # noqa: E402
from MaxText.config.loader import help_text  # noqa: E402
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402
from MaxText.training import evaluation, preflight  # noqa: E402
from MaxText.training.runtime import maybe_initialize_distributed, with_saved_model_keys  # noqa: E402
from MaxText.training.trainer import Trainer  # noqa: E402


def main(argv: list[str]) -> int:
  default_to_cpu_without_accelerator()
  config_lib.silence_async_leftovers()
  if "--help" in argv or "-h" in argv:
    print("usage: python MaxText/train.py base.yml [key=value ...]\n")
    print(help_text())
    return 0
  try:
    config = config_lib.load(argv[1:])
    if config.eval_only:  # the saved model's own keys (a converted model, a teacher run) describe it
      evaluation.check_eval_only(config)
      config = with_saved_model_keys(argv[1:], config)
    files = preflight.run(config)
    if not config.eval_only:
      preflight.check_run_folder(config)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  maybe_initialize_distributed(config)
  if config.jax_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.jax_cache_dir)
  try:
    if config.eval_only:
      evaluation.evaluate_checkpoint(config)
    else:
      Trainer(config, files).run()
  except config_lib.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
