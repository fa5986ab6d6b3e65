"""Upstream MaxText's distillation module path (`maxtext.trainers.post_train.distillation.train_distill`),
spelled with this package's name: `python -m MaxText.trainers.post_train.distillation.train_distill ...`."""

from __future__ import annotations

import sys

from MaxText.training import launch

USAGE = "python -m MaxText.trainers.post_train.distillation.train_distill [CONFIG.yml] [key=value ...]"


def main(argv: list[str]) -> int:
  return launch.distill(argv, USAGE)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
