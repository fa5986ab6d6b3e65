"""Supervised fine-tuning, upstream MaxText's command: `python -m MaxText.sft_trainer [CONFIG.yml] key=value ...`.

The same trainer as MaxText/train.py with use_sft=true; without a yml it reads configs/post_train/sft.yml
(upstream's starter). Sequence-level KD is this command on the teacher's generated conversations.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make `import MaxText` work from a checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText.training import launch  # noqa: E402

USAGE = "python -m MaxText.sft_trainer [MaxText/configs/post_train/sft.yml] [key=value ...]"


def main(argv: list[str]) -> int:
  return launch.sft(argv, USAGE)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
