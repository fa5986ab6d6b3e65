"""lm-evaluation-harness's command line with the `maxtext` model registered, and this project's one-line
errors: a bad `--model_args` of the maxtext model is refused from its config before lm-eval starts, and a
task name that no task folder holds is reported with the folders that were searched.

Every flag is lm-eval's own (`lm_eval --help`); `lm_eval` itself cannot find models of other packages (it
has no plugin registry), so this module imports the adapter and then runs lm-eval's CLI.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from MaxText.config import UserError
from MaxText.config.errors import MissingFileError

# what the adapter takes as options of its own; every other model arg is a config key
_ADAPTER_OPTIONS = ("batch_size", "max_batch_size", "device", "max_length", "max_gen_toks", "add_bos_token")
_PROJECT_TASKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "evals")


def check_model_args(model_args: dict) -> None:
  """The maxtext model's args as its adapter will read them: its config is loaded and checked (keys,
  values, the checkpoint's existence), which reads no parameters."""
  from MaxText.lm_harness.adapter import load_model_config

  keys = {k: v for k, v in model_args.items() if k not in _ADAPTER_OPTIONS}
  load_model_config(str(keys.pop("load_parameters_path", "") or ""), keys)


def tasks_not_found(message: str, include_path: str | None) -> MissingFileError:
  """lm-eval's "Tasks not found: x" as one line saying where the tasks were looked for."""
  missing = message.split(":", 1)[1].strip()
  searched = "lm-eval's own tasks"
  if include_path:
    searched += f" and the --include_path folder {include_path!r}"
  hint = "" if include_path else f"; this project's tasks are in {os.path.relpath(_PROJECT_TASKS)} (--include_path)"
  return MissingFileError(f"--tasks: no task named {missing} in {searched}{hint}")


def run(argv: Sequence[str]) -> int:
  """lm-eval's CLI on `argv` (without the program name); a user's error ends it with one line."""
  from lm_eval._cli import HarnessCLI
  from lm_eval.utils import setup_logging

  import MaxText.lm_harness.adapter  # noqa: F401 - registers the `maxtext` model

  sys.argv = [sys.argv[0], *argv]  # HarnessCLI reads sys.argv (and inserts its legacy `run` subcommand)
  parser = HarnessCLI()
  args = parser.parse_args()
  try:
    if getattr(args, "command", None) == "run" and getattr(args, "model", None) == "maxtext":
      check_model_args(dict(args.model_args or {}))
    setup_logging()
    parser.execute(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except ValueError as e:
    if not str(e).startswith("Tasks not found:"):
      raise
    print(f"error: {tasks_not_found(str(e), getattr(args, 'include_path', None))}", file=sys.stderr)
    return 1
  return 0
