"""Online (or offline top-k) distillation, upstream MaxText's command:
`python -m MaxText.train_distill [CONFIG.yml] teacher_overrides.load_parameters_path=... key=value ...`.

The same trainer as MaxText/train.py with use_kd=true and a teacher required (a checkpoint, kd_teachers,
or offline_data_dir); without a yml it reads configs/post_train/distillation.yml (upstream's starter).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make `import MaxText` work from a checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText.training import launch  # noqa: E402

USAGE = "python -m MaxText.train_distill [MaxText/configs/post_train/distillation.yml] [key=value ...]"


def main(argv: list[str]) -> int:
  return launch.distill(argv, USAGE)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
