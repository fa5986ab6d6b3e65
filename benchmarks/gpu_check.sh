#!/usr/bin/env bash
# The one device check, under 9.5 minutes on one H200 (docs/speed.md, "On a GPU"):
#   1. the `gpu` tests (tests/test_gpu.py): cudnn and flash against dot_product through the real kernels,
#      and KD train steps on the GPU against the CPU;
#   2. this project's programs at the seed's shapes (benchmarks/gpu_bench.py --preset h200);
#   3. the PyTorch + transformers peer at the same shapes (benchmarks/torch_kd_peer.py);
#   4. the side-by-side table and the targets (gpu_bench.py --table).
# Usage, from the repository root (wheels from benchmarks/gpu_wheels.sh in .whl/ when the machine lacks them):
#   bash benchmarks/gpu_check.sh [OUT_DIR]       STAGES=tests,project,peer BATCHES=4,1 PRESET=h200 by default
# (PRESET=cpu-smoke PLATFORMS=cpu runs the same script at tiny shapes on a machine without a GPU.)
# Each stage has a time limit (TESTS_SECONDS=120, PROJECT_SECONDS=270, PEER_SECONDS=150: the whole under 9.5
# minutes); rows are written as they are measured, so a stage cut short keeps what it measured.
# Everything lands in OUT_DIR (default $OUT, else outputs/gpu_check): env.txt, the three logs, results.jsonl,
# table.md, kd_profile.md (the KD step's kernels by time) and kd_trace.json.gz (Perfetto) when under 15 MB.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-outputs/gpu_check}}"
mkdir -p "$OUT_DIR"
PYTHON="${PYTHON:-python3}"
STAGES="${STAGES:-tests,project,peer}"
BATCHES="${BATCHES:-4,1}"
PRESET="${PRESET:-h200}"
if ! "$PYTHON" -c "import grain, tensorboardX, gguf" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1 JAX_PLATFORMS="${PLATFORMS:-cuda,cpu}" XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
# upstream MaxText's single-host GPU flags: cuBLAS rather than Triton GEMMs, the latency-hiding scheduler
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_triton_gemm=false}"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PYTHON" -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__); print(jax.devices())"
  echo "XLA_FLAGS=$XLA_FLAGS"
} 2>&1 | tee "$OUT_DIR/env.txt"
status=0
if [[ ",$STAGES," == *",tests,"* ]]; then
  timeout "${TESTS_SECONDS:-120}" "$PYTHON" -m pytest -m gpu tests/test_gpu.py -p no:xdist -p no:cacheprovider -o addopts="" -q -rs 2>&1 \
    | tee "$OUT_DIR/gpu_tests.log" || status=1
fi
if [[ ",$STAGES," == *",project,"* ]]; then
  trace_dir="$(mktemp -d)"  # the KD step's profile: its kernel table comes back, the trace if small enough
  timeout "${PROJECT_SECONDS:-270}" "$PYTHON" benchmarks/gpu_bench.py --preset "$PRESET" --batches "$BATCHES" --out "$OUT_DIR/results.jsonl" \
    --profile_dir "$trace_dir" 2>&1 | tee "$OUT_DIR/project.log" || status=1
  device_prefix="/device:GPU"; [[ "${PLATFORMS:-cuda}" == cpu ]] && device_prefix="/host:CPU"
  JAX_PLATFORMS=cpu "$PYTHON" benchmarks/profile_summary.py "$trace_dir" --device "$device_prefix" \
    > "$OUT_DIR/kd_profile.md" 2>&1 || status=1
  find "$trace_dir" -name perfetto_trace.json.gz -size -15M -exec cp {} "$OUT_DIR/kd_trace.json.gz" \;
fi
if [[ ",$STAGES," == *",peer,"* ]]; then
  JAX_PLATFORMS=cpu timeout "${PEER_SECONDS:-150}" "$PYTHON" benchmarks/torch_kd_peer.py --preset "$PRESET" --batches "$BATCHES" --compile \
    --out "$OUT_DIR/results.jsonl" 2>&1 | tee "$OUT_DIR/peer.log" || status=1
fi
if [ -s "$OUT_DIR/results.jsonl" ]; then
  JAX_PLATFORMS=cpu "$PYTHON" benchmarks/gpu_bench.py --table "$OUT_DIR/results.jsonl" | tee "$OUT_DIR/table.md"
fi
exit $status
