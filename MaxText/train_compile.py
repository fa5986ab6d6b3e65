"""Will it fit? `python MaxText/train_compile.py base.yml compile_topology=v5p-16 [key=value ...]`

Compiles the exact train step of the run the same command line would start (plain CE, online or
offline KD, feature KD, gradient accumulation) for a TPU topology, on this host (no TPU needed,
libtpu is), and prints what one chip holds: parameters, optimizer state, teacher, batch,
temporaries and the total against the chip's HBM, with XLA's FLOP estimate. A step that does not fit
ends with a one-line verdict naming the biggest buffers (exit 1). No file is read or written.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host compiles; it does not run a TPU of its own
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # libtpu's one-process lock is for running, not compiling

from MaxText import config as config_lib  # noqa: E402


def main(argv: list[str]) -> int:
  config_lib.silence_async_leftovers()
  try:
    config = config_lib.load(argv[1:])
    if not config.compile_topology:
      raise config_lib.ConfigError("compile_topology: the TPU slice to compile for must be given (e.g. v5p-16)")
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  import jax  # the compile stack, once the config is known to be good

  from MaxText.training import aot

  # a persistent compilation cache (JAX_COMPILATION_CACHE_DIR) would store the TPU executable, and the
  # next run could not load it back on this TPU-less host (a warning, then a second compile): keep none
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    topology = aot.parse_topology(config.compile_topology, config.compile_topology_num_slices)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  try:
    report = aot.compile_step(config, topology)
  except config_lib.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(aot.format_report(report))
  return 0 if report.fits else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv))
