#!/usr/bin/env bash
# Downloads, into .whl/, the wheels benchmarks/gpu_check.sh installs on a GPU machine whose image has
# jax, flax, optax, orbax, torch and transformers but not these (CPython 3.12, x86-64; no dependencies:
# the image has the rest). Run it where PyPI is reachable; the GPU machine needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  grain==0.2.18 array_record==0.8.6 tensorboardX==2.6.5 gguf==0.19.0 portpicker==1.6.0 \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 "$@"  # trl: the peer's GKD-loss row
ls -la .whl
