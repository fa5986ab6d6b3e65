"""Entry point: `python MaxText/train.py base.yml key=value ...` (`--help` lists every key).

config -> pre-flight file checks -> Trainer (mesh, state, teacher, input, jitted step) -> run
(MaxText/training/launch.py, shared with the SFT and distillation entry points).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make `import MaxText` work from a checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MaxText.training import launch  # noqa: E402


def main(argv: list[str]) -> int:
  return launch.main(argv)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
