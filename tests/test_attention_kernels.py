"""The platform kernels. splash (TPU) runs here through Pallas's interpreter: it equals dot_product in
values and gradients (packing, GQA, MQA, a length that is no multiple of 128), per shard on a mesh too,
and compiles for a TPU topology as a Pallas kernel. cudnn (GPU) cannot run here: its ragged layout is
checked against segment ids, attention over that layout (an exact reference) equals dot_product, and an
over-full row falls back to flash. Selection and the refusals are checked by name."""

import os
import sys

import forked_jobs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import pyconfig
from MaxText.config import checks
from MaxText.model import attention, cudnn_attention
from MaxText.model.splash_attention import splash_attention
from MaxText.parallel import sharding
from MaxText.pyconfig import ConfigError
from tests.conftest import REPO, xla_flags
from tests.test_attention import TOL, _model_loss_and_grads, _problem, _value_and_grads


@pytest.mark.parametrize(
  "length, heads, kv_heads", [(48, 4, 2), (200, 6, 1), (256, 4, 4)], ids=["gqa-padded", "mqa-padded", "mha-2-blocks"]
)
def test_splash_matches_dot_product_values_and_gradients_in_float32(length, heads, kv_heads):
  q, k, v, segments, weights = _problem(length, heads, kv_heads)
  np.testing.assert_allclose(
    splash_attention(q, k, v, segments), attention.dot_product_attention(q, k, v, segments), rtol=TOL, atol=TOL
  )
  want = _value_and_grads(attention.dot_product_attention, q, k, v, segments, weights)
  got = _value_and_grads(splash_attention, q, k, v, segments, weights)
  np.testing.assert_allclose(got[0], want[0], rtol=TOL)
  for g, w in zip(got[1], want[1], strict=True):
    np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL)


def test_splash_in_bfloat16_is_as_accurate_as_dot_product_in_bfloat16():
  # Same bounds as flash's bf16 test: output error <= 1.5x bf16 dot_product's, gradients <= 2x (splash
  # also rounds dS to bf16 before its matmuls), and under 0.05 absolute for unit-scale values.
  q, k, v, segments, weights = _problem(length=130)
  exact = _value_and_grads(attention.dot_product_attention, q, k, v, segments, weights)
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  dense = _value_and_grads(attention.dot_product_attention, *low, segments, weights)
  splash = _value_and_grads(splash_attention, *low, segments, weights)
  error = lambda x, ref: float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(ref, np.float32))))
  reference = attention.dot_product_attention(q, k, v, segments)
  splash_error = error(splash_attention(*low, segments), reference)
  assert splash_error <= 1.5 * error(attention.dot_product_attention(*low, segments), reference)
  assert splash_error < 0.05
  for got, base, ref in zip(splash[1], dense[1], exact[1], strict=True):
    assert error(got, ref) <= 2.0 * error(base, ref) and error(got, ref) < 0.05, (error(got, ref), error(base, ref))


def test_the_model_gives_the_same_loss_and_gradients_with_splash():
  (dense_loss, dense_grads), (splash_loss, splash_grads) = (_model_loss_and_grads(k) for k in ("dot_product", "splash"))
  np.testing.assert_allclose(splash_loss, dense_loss, rtol=TOL)
  for g, w in zip(jax.tree.leaves(splash_grads), jax.tree.leaves(dense_grads), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=TOL)


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh
from MaxText.model.attention import dot_product_attention
from MaxText.model.splash_attention import splash_attention
from tests.test_attention import _problem, _value_and_grads
mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
for kv_heads in (2, 1):  # kv heads split over "tensor" like the query heads; one kv head, copied per shard
  q, k, v, segments, weights = _problem(length=130, heads=4, kv_heads=kv_heads)
  q, k, v, segments, weights = (jnp.concatenate([x, x[::-1]]) for x in (q, k, v, segments, weights))
  want = _value_and_grads(dot_product_attention, q, k, v, segments, weights)
  with jax.set_mesh(mesh):
    got = jax.jit(lambda q, k, v: _value_and_grads(splash_attention, q, k, v, segments, weights))(q, k, v)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
print("sharded splash equals dot_product")
"""


def test_splash_per_shard_on_a_data_fsdp_tensor_mesh_equals_dot_product():
  env = {**os.environ, "XLA_FLAGS": xla_flags(8), "JAX_PLATFORMS": "cpu"}
  proc = forked_jobs.run([sys.executable, "-c", SHARDED], cwd=REPO, env=env, timeout=600)
  assert proc.returncode == 0 and "sharded splash equals dot_product" in proc.stdout, proc.stderr[-3000:]


def _lowered_for_v5p(kernel: str, length: int = 256) -> str:
  pytest.importorskip("libtpu")
  from MaxText.training import aot

  devices = np.asarray(aot.parse_topology("v5p-8", 1).devices()).reshape(1, 4, 1)
  mesh = jax.sharding.Mesh(devices, sharding.MESH_AXES)
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
  shape = lambda *s, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(s, dtype, sharding=spec)
  loss = lambda q, k, v, s: jnp.sum(attention.attend(q, k, v, s, kernel).astype(jnp.float32))
  args = (
    shape(4, length, 8, 128),
    shape(4, length, 2, 128),
    shape(4, length, 2, 128),
    shape(4, length, dtype=jnp.int32),
  )
  with jax.set_mesh(mesh):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args)
  lowered.compile()  # the TPU compiler accepts it
  return lowered.as_text()


def test_autoselect_compiles_the_splash_kernel_for_a_tpu_topology():
  assert "tpu_custom_call" in _lowered_for_v5p("autoselect")  # the Pallas kernel, not its interpreted form
  assert "tpu_custom_call" not in _lowered_for_v5p("flash")


def _ragged_reference(q, k, v, offsets, lengths):
  """Attention over cuDNN's ragged layout, written from its definition: token t of row b belongs to the
  sequence r with offsets[b, r] <= t < offsets[b, r] + lengths[b, r] and sees that sequence's tokens
  up to itself; a token in no sequence sees nothing (output 0)."""
  t = jnp.arange(q.shape[1])
  valid = lengths >= 0  # [B, R]
  inside = valid[:, :, None] & (offsets[:, :-1, None] <= t) & (t < offsets[:, :-1, None] + lengths[:, :, None])
  owner = jnp.where(inside.any(1), jnp.argmax(inside, axis=1), -1)  # [B, L]
  sees = (owner[:, :, None] == owner[:, None, :]) & (owner[:, :, None] >= 0) & (t[:, None] >= t[None, :])
  groups = q.shape[2] // k.shape[2]
  kk, vv = (jnp.repeat(x, groups, axis=2) for x in (k, v))
  scores = jnp.einsum("blhk,bthk->bhlt", q, kk) / np.sqrt(q.shape[-1])
  scores = jnp.where(sees[:, None], scores, -jnp.inf)
  probs = jnp.nan_to_num(jax.nn.softmax(scores, axis=-1))
  return jnp.einsum("bhlt,bthk->blhk", probs, vv)


def test_the_ragged_layout_lists_each_rows_runs_and_the_padding_tail():
  segments = jnp.asarray([[1, 1, 2, 2, 2, 3, 0, 0], [5, 5, 5, 5, 5, 5, 5, 5], [1, 2, 3, 4, 5, 0, 0, 0]])
  offsets, lengths, runs = cudnn_attention.ragged_layout(segments, slots=4)
  np.testing.assert_array_equal(offsets, [[0, 2, 5, 6, -1], [0, -1, -1, -1, -1], [0, 1, 2, 3, -1]])
  np.testing.assert_array_equal(lengths, [[2, 3, 1, 2], [8, -1, -1, -1], [1, 1, 1, 1]])
  np.testing.assert_array_equal(runs, [4, 1, 6])  # row 3 has 6 runs: more than the 4 slots


def test_attention_over_the_ragged_layout_equals_dot_product_values_and_gradients():
  q, k, v, segments, weights = _problem(length=48, heads=4, kv_heads=2)  # 3 documents and padding per row
  cudnn_like = lambda *a: cudnn_attention.cudnn_attention(
    *a, max_segments=3, fallback=attention.flash_attention, ragged=_ragged_reference
  )
  want = _value_and_grads(attention.dot_product_attention, q, k, v, segments, weights)
  got = _value_and_grads(cudnn_like, q, k, v, segments, weights)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL)


def test_a_batch_with_an_over_full_row_takes_the_fallback():
  q, k, v, segments, _ = _problem(length=48, heads=4, kv_heads=2)
  wrong = lambda q, k, v, offsets, lengths: jnp.zeros_like(q)  # would be visible if it ran
  attend = lambda max_segments: cudnn_attention.cudnn_attention(
    q, k, v, segments, max_segments, fallback=attention.flash_attention, ragged=wrong
  )
  want = attention.dot_product_attention(q, k, v, segments)
  np.testing.assert_allclose(attend(2), want, rtol=TOL, atol=TOL)  # 3 documents + padding > 2 + 1 slots
  assert float(jnp.max(jnp.abs(attend(3)))) == 0.0  # they fit: the ragged kernel ran


def test_autoselect_picks_the_platform_kernel_that_serves_the_model(monkeypatch):
  assert attention.select_kernel("autoselect", "tpu") == "splash"
  assert attention.select_kernel("autoselect", "cpu") == "flash"
  assert attention.select_kernel("autoselect", "gpu", jnp.bfloat16, 128) == attention.GPU_DEFAULT
  monkeypatch.setattr(attention, "GPU_DEFAULT", "cudnn")  # once cudnn is measured on a GPU
  assert attention.select_kernel("autoselect", "gpu", jnp.bfloat16, 128) == "cudnn"
  assert attention.select_kernel("autoselect", "gpu", jnp.float32, 128) == "flash"  # cuDNN takes bf16/fp16
  assert attention.select_kernel("autoselect", "gpu", jnp.bfloat16, 256) == "flash"
  for kernel in ("dot_product", "flash", "splash", "cudnn"):
    assert attention.select_kernel(kernel, "cpu") == kernel  # a named kernel is never replaced


def test_a_kernel_that_cannot_serve_the_run_is_refused_by_name():
  with pytest.raises(
    ConfigError, match="attention: cudnn cannot serve the student: .* bfloat16 or float16, got float32"
  ):
    pyconfig.from_dict({"attention": "cudnn", "dtype": "float32"})
  with pytest.raises(ConfigError, match="attention: cudnn cannot serve the student: .* up to 128, got 256"):
    pyconfig.from_dict({"attention": "cudnn", "dtype": "bfloat16", "head_dim": 256})
  with pytest.raises(ConfigError, match="attention: cudnn cannot serve kd_teacher_overrides's teacher: .* got float32"):
    pyconfig.from_dict(
      {"attention": "cudnn", "use_kd": True, "kd_teacher_parameters_path": "/t", "kd_teacher_dtype": "float32"}
    )
  pyconfig.from_dict({"attention": "cudnn", "dtype": "bfloat16"})  # served
  with pytest.raises(ConfigError, match=r"attention: splash runs on TPU only and this run's devices are cpu"):
    sharding.create_mesh(pyconfig.from_dict({"attention": "splash"}))
  with pytest.raises(ConfigError, match=r"attention: cudnn runs on GPU only and this run's devices are cpu"):
    checks.check_attention_platform("cudnn", "cpu")
  checks.check_attention_platform("splash", "tpu")
  sharding.create_mesh(pyconfig.from_dict({"attention": "autoselect"}))
  with pytest.raises(ConfigError, match="max_segments_per_seq: expected a positive integer, got 0"):
    pyconfig.from_dict({"max_segments_per_seq": 0})
