"""lm-evaluation-harness's command line with this project's `maxtext` model registered.

  python -m MaxText.run_lm_eval --model maxtext --model_args load_parameters_path=CKPT[,max_length=1024] \
      --tasks cloze_jsonl --include_path evals [--batch_size 8] [--output_path results/]

Every flag is lm-eval's own (`lm_eval --help`); MaxText/lm_harness/cli.py registers the `maxtext` model and
refuses bad input in one line. Also `--model hf` etc. work here, which is how the parity with transformers
is checked.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402


def main() -> None:
  default_to_cpu_without_accelerator()
  # tasks read local files only: never wait on the Hugging Face Hub for a data set or a metric
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  try:
    import lm_eval  # noqa: F401
  except ImportError:
    sys.exit("error: lm-evaluation-harness is not installed (pip install -e '.[eval]')")
  from MaxText.lm_harness import cli

  sys.exit(cli.run(sys.argv[1:]))


if __name__ == "__main__":
  main()
