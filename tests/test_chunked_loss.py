"""`chunked_loss`: the gradient taken chunk by chunk in the forward pass equals plain autodiff of the whole,
on one device and on a mesh (where a chunk counts tokens per device)."""

import functools
import os
import sys

import forked_jobs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText.distill.kd_loss import KDOptions, kd_chunk_sums
from MaxText.distill.sources import LiveTeacher, Pruning
from MaxText.losses.chunking import chunked_loss, chunked_sums
from MaxText.losses.cross_entropy import ce_chunk_sums
from tests.conftest import REPO, xla_flags


def _inputs(n=50, d=8, v=40, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  per_token = {
    "hidden": f(n, d),
    "teacher_hidden": f(n, d),
    "targets": jnp.asarray(rng.integers(0, v, n)),
    "weights": jnp.asarray(rng.random(n) > 0.2, jnp.float32),
  }
  shared = {"w_DxV": f(d, v), "teacher_w_DxV": f(d, v) * 2, "alpha": jnp.float32(0.4), "temperature": 2.0}
  return per_token, shared


KD = {
  "full": Pruning(),
  "top-p + OTHER": Pruning(top_p=0.8, use_other_bucket=True),
  "top-k": Pruning(top_k=5),
}


def _chunk_fn(kind):
  if kind == "ce":
    return functools.partial(ce_chunk_sums, z_loss=1e-3), lambda s: s["ce_sum"] + s["z_loss_sum"]
  source = LiveTeacher(None, None, None, KD[kind])
  options = KDOptions(use_hard_labels=False, z_loss=1e-3, temperature_is_one=False)
  return functools.partial(kd_chunk_sums, options=options, source=source), lambda s: s["total_loss_sum"]


@pytest.mark.parametrize("kind", ["ce", *KD])
@pytest.mark.parametrize("chunk", [16, 7])  # 4 and 8 chunks, the last one filled with zero-weight rows
def test_value_and_gradients_equal_autodiff_of_the_unchunked_loss(kind, chunk):
  per_token, shared = _inputs()
  chunk_fn, objective = _chunk_fn(kind)

  def whole(h, w):  # one chunk: plain autodiff through the whole loss, the reference
    return objective(chunked_sums(chunk_fn, {**per_token, "hidden": h}, {**shared, "w_DxV": w}, 1000))

  def fused(h, w):
    return chunked_loss(chunk_fn, {**per_token, "hidden": h}, {**shared, "w_DxV": w}, chunk, objective)[0]

  args = (per_token["hidden"], shared["w_DxV"])
  want_value, want_grads = jax.value_and_grad(whole, argnums=(0, 1))(*args)
  got_value, got_grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(*args)
  np.testing.assert_allclose(got_value, want_value, rtol=1e-6)
  for got, want in zip(got_grads, want_grads, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(want))))


def test_the_sums_are_metrics_without_gradient_and_equal_chunked_sums():
  per_token, shared = _inputs()
  chunk_fn, objective = _chunk_fn("top-p + OTHER")
  value, sums = chunked_loss(chunk_fn, per_token, shared, 16, objective)
  reference = chunked_sums(chunk_fn, per_token, shared, 16)
  for key, want in reference.items():
    np.testing.assert_allclose(sums[key], want, rtol=1e-6, err_msg=key)
  np.testing.assert_allclose(value, reference["total_loss_sum"], rtol=1e-6)
  metric_grad = jax.grad(
    lambda h: chunked_loss(chunk_fn, {**per_token, "hidden": h}, shared, 16, objective)[1]["ce_sum"]
  )
  assert float(jnp.max(jnp.abs(metric_grad(per_token["hidden"])))) == 0.0


SHARDED = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from MaxText.losses.chunking import _to_chunks, chunked_loss, chunked_sums
from tests.test_chunked_loss import _chunk_fn, _inputs
mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
with jax.set_mesh(mesh):  # 64 tokens over data x fsdp = 4 devices: chunks of 4 tokens per device hold 16
  assert _to_chunks({"x": np.zeros((64, 3))}, 4)[0]["x"].shape == (4, 16, 3)
assert _to_chunks({"x": np.zeros((64, 3))}, 4)[0]["x"].shape == (16, 4, 3)  # one device
for kind in ("ce", "top-p + OTHER"):
  per_token, shared = _inputs(n=64, v=48)
  chunk_fn, objective = _chunk_fn(kind)
  whole = lambda h, w: objective(chunked_sums(chunk_fn, {**per_token, "hidden": h}, {**shared, "w_DxV": w}, 1000))
  fused = lambda h, w: chunked_loss(chunk_fn, {**per_token, "hidden": h}, {**shared, "w_DxV": w}, 4, objective)[0]
  want_value, want_grads = jax.value_and_grad(whole, argnums=(0, 1))(per_token["hidden"], shared["w_DxV"])
  with jax.set_mesh(mesh):
    h = jax.device_put(per_token["hidden"], NamedSharding(mesh, P(("data", "fsdp"))))
    w = jax.device_put(shared["w_DxV"], NamedSharding(mesh, P("fsdp", "tensor")))
    got_value, got_grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(h, w)
  np.testing.assert_allclose(got_value, want_value, rtol=1e-6)
  for got, want in zip(got_grads, want_grads, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(want))))
print("sharded chunked_loss equals autodiff")
"""


def test_chunks_count_tokens_per_device_and_equal_autodiff_on_a_data_fsdp_tensor_mesh():
  env = {**os.environ, "XLA_FLAGS": xla_flags(8), "JAX_PLATFORMS": "cpu"}
  proc = forked_jobs.run([sys.executable, "-c", SHARDED], cwd=REPO, env=env, timeout=600)
  assert proc.returncode == 0 and "sharded chunked_loss equals autodiff" in proc.stdout, proc.stderr[-3000:]
