"""On a real NVIDIA GPU (marker `gpu`; skipped without one, so CI never runs them): the cudnn and flash
attention kernels against dot_product in float32 at the highest matmul precision, values and gradients,
with packed documents, padding and GQA, through the real cuDNN call; and two KD train steps on the GPU
against the same steps on the CPU.

  JAX_PLATFORMS=cuda,cpu python3 -m pytest -m gpu tests/test_gpu.py -p no:xdist -o addopts=""

(benchmarks/gpu_check.sh runs them first.) The bf16 bounds are those of the CPU kernels' bf16 tests:
a kernel's error against the float32 reference at most 1.5x (outputs) and 2x (gradients) that of
dot_product run in bf16 on the same rounded inputs, and under 0.05 absolute for unit-scale values.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.gpu_bench import KD_T1, PRESETS, TINY_TEACHER, kd_config, student_keys
from MaxText.data.input_pipeline import make_iterator
from MaxText.distill.teacher import abstract_teacher
from MaxText.model import attention, cudnn_attention
from MaxText.model import decoder as model_lib
from MaxText.parallel import sharding
from MaxText.training.runtime import to_global
from MaxText.training.state import init_state, make_layout
from MaxText.training.step import jit_train_step
from tests.test_attention import _problem, _value_and_grads


def _gpus():
  try:
    return jax.devices("gpu")
  except RuntimeError:  # no GPU backend in this process (JAX_PLATFORMS=cpu, or no CUDA plugin)
    return []


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _gpus(), reason="needs an NVIDIA GPU")]

KERNELS = {
  "cudnn": lambda q, k, v, s: cudnn_attention.cudnn_attention(q, k, v, s, 3, fallback=attention.flash_attention),
  "flash": attention.flash_attention,
}
SHAPES = [(1024, 8, 2, 64), (512, 4, 4, 128)]  # length, query heads, kv heads, head width: GQA and MHA


def _error(x, ref) -> float:
  return float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(ref, np.float32))))


def _on_gpu(*arrays):
  return [jax.device_put(a, _gpus()[0]) for a in arrays]


@pytest.mark.parametrize("shape", SHAPES, ids=["gqa-1024", "mha-512"])
@pytest.mark.parametrize("kernel", ["cudnn", "flash"])
def test_a_kernel_in_bfloat16_is_as_accurate_as_dot_product_in_bfloat16_on_the_gpu(kernel, shape):
  length, heads, kv_heads, dim = shape
  q, k, v, segments, weights = _on_gpu(*_problem(length, heads, kv_heads, dim))  # 3 documents + padding per row
  with jax.default_matmul_precision("highest"):
    exact = _value_and_grads(attention.dot_product_attention, q, k, v, segments, weights)
    reference = attention.dot_product_attention(q, k, v, segments)
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  dense = _value_and_grads(attention.dot_product_attention, *low, segments, weights)
  got = _value_and_grads(KERNELS[kernel], *low, segments, weights)
  out_error = _error(KERNELS[kernel](*low, segments), reference)
  assert out_error <= 1.5 * _error(attention.dot_product_attention(*low, segments), reference) + 1e-3
  assert out_error < 0.05
  for g, base, ref in zip(got[1], dense[1], exact[1], strict=True):
    assert _error(g, ref) <= 2.0 * _error(base, ref) + 1e-3 and _error(g, ref) < 0.05, (
      _error(g, ref),
      _error(base, ref),
    )


@pytest.mark.parametrize("shape", SHAPES, ids=["gqa-1024", "mha-512"])
def test_flash_matches_dot_product_in_float32_on_the_gpu(shape):
  q, k, v, segments, weights = _on_gpu(*_problem(*shape))
  with jax.default_matmul_precision("highest"):
    want = _value_and_grads(attention.dot_product_attention, q, k, v, segments, weights)
    got = _value_and_grads(attention.flash_attention, q, k, v, segments, weights)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_cudnn_runs_the_ragged_kernel_not_the_fallback():
  """With a fallback that would give zeros, a batch whose rows fit the slots must come from cuDNN."""
  q, k, v, segments, _ = _on_gpu(*_problem(256, 8, 2, 64))
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  zeros = lambda q, k, v, s: jnp.zeros_like(q)
  out = cudnn_attention.cudnn_attention(*low, segments, 3, fallback=zeros)
  assert float(jnp.max(jnp.abs(out.astype(jnp.float32)))) > 0.1
  assert _error(out, attention.dot_product_attention(*low, segments)) < 0.05


def kd_step_metrics(devices, steps: int = 2) -> list[dict]:
  """Metrics of `steps` KD train steps (the cpu-smoke student and teacher, both float32, dot_product
  attention, a random teacher) on a mesh over `devices`: the same seeds and synthetic batches on any platform."""
  preset = dataclasses.replace(PRESETS["cpu-smoke"], teacher_overrides=f"{TINY_TEACHER},vocab_size=512")
  keys = {**student_keys(preset, 2, "none"), "dtype": "float32", "attention": "dot_product"}
  config = kd_config(keys, preset, KD_T1, offline=False, teacher_dtype="float32")
  mesh = sharding.create_mesh(config, devices)
  batch_sharding = sharding.batch_sharding(mesh)
  data = make_iterator(config, None, "train", int(config.per_device_batch_size * len(devices)))
  metrics = []
  with jax.set_mesh(mesh), jax.default_matmul_precision("highest"):
    layout = make_layout(config, mesh, None)
    teacher, _ = abstract_teacher(config, mesh)
    teacher_params = model_lib.init_params(teacher.config, teacher.param_shardings)
    state = init_state(config, layout)
    step = jit_train_step(config, layout, teacher, batch_sharding)
    for _ in range(steps):
      state, step_metrics = step(state, teacher_params, to_global(next(data), batch_sharding))
      metrics.append({k: float(v) for k, v in step_metrics.items()})
  return metrics


def test_kd_train_steps_on_the_gpu_equal_the_same_steps_on_the_cpu():
  gpu, cpu = kd_step_metrics(_gpus()[:1]), kd_step_metrics(jax.devices("cpu")[:1])
  for got, want in zip(gpu, cpu, strict=True):
    for key in ("total_loss_sum", "ce_sum", "kd/soft_loss_sum", "grad_norm", "tokens"):
      np.testing.assert_allclose(got[key], want[key], rtol=1e-4, err_msg=key)
