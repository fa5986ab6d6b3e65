"""Upstream MaxText's SFT module path (`maxtext.trainers.post_train.sft.train_sft`), spelled with this
package's name: `python -m MaxText.trainers.post_train.sft.train_sft [CONFIG.yml] key=value ...`."""

from __future__ import annotations

import sys

from MaxText.training import launch

USAGE = "python -m MaxText.trainers.post_train.sft.train_sft [CONFIG.yml] [key=value ...]"


def main(argv: list[str]) -> int:
  return launch.sft(argv, USAGE)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
