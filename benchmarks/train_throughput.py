"""Training tokens/s and TFLOP/s per device of the demo model and of a 5M-parameter reference config.

  .venv/bin/python benchmarks/train_throughput.py [--steps 10] [--dtype float32]

The 5M config (emb 256, 4 layers, 4 heads, mlp 1024, vocab 32000, seq 256, batch 8, 1 device) is the
one upstream MaxText was timed on at about 0.8 s per step on this class of CPU. Both models run the
real jitted train_step on synthetic data; the first (compiling) step is excluded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from MaxText import pyconfig  # noqa: E402
from MaxText.data.input_pipeline import make_iterator  # noqa: E402
from MaxText.distill.objective import make_loss_fn  # noqa: E402
from MaxText.model.decoder import parameter_count  # noqa: E402
from MaxText.parallel import sharding  # noqa: E402
from MaxText.training.metrics import flops_per_token  # noqa: E402
from MaxText.training.runtime import to_global  # noqa: E402
from MaxText.training.state import init_state, make_layout  # noqa: E402
from MaxText.training.step import make_train_step  # noqa: E402

CONFIGS = {
  "demo (byte vocab, seq 128, batch 8)": {"model_name": "demo", "max_target_length": 128, "per_device_batch_size": 8},
  "5M reference (vocab 32000, seq 256, batch 8)": {
    "vocab_size": 32000,
    "emb_dim": 256,
    "num_decoder_layers": 4,
    "num_query_heads": 4,
    "num_kv_heads": 4,
    "head_dim": 64,
    "mlp_dim": 1024,
    "max_target_length": 256,
    "per_device_batch_size": 8,
  },
}


def measure(overrides: dict, steps: int, dtype: str, attention: str = "autoselect") -> dict:
  config = pyconfig.from_dict(
    {
      **overrides,
      "dataset_type": "synthetic",
      "dtype": dtype,
      "steps": steps + 1,
      "remat_policy": "none",
      "attention": attention,
    }
  )
  mesh = sharding.create_mesh(config)
  layout = make_layout(config, mesh, None)
  state = init_state(config, layout)
  batch_sharding = sharding.batch_sharding(mesh)
  batch_size = int(config.per_device_batch_size * jax.device_count())
  data = make_iterator(config, None, "train", batch_size)
  step_fn = jax.jit(
    make_train_step(config, layout.tx, make_loss_fn(config, layout.graphdef)),
    donate_argnums=(0,),
    in_shardings=(layout.state_shardings, None, batch_sharding),
  )
  batches = [to_global(next(data), batch_sharding) for _ in range(steps + 1)]
  with jax.set_mesh(mesh):
    state, metrics = step_fn(state, None, batches[0])
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for batch in batches[1:]:
      state, metrics = step_fn(state, None, batch)
    jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  tokens = batch_size * config.max_target_length
  return {
    "params": parameter_count(state["params"]),
    "s_per_step": seconds,
    "tokens_per_s": tokens / seconds,
    "tflops_per_device": tokens / seconds * flops_per_token(config) / jax.device_count() / 1e12,
  }


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--attention", default="autoselect", help="kernel(s), comma-separated, timed side by side")
  args = parser.parse_args()
  print(f"{jax.device_count()} {jax.devices()[0].platform} device(s), dtype {args.dtype}, {args.steps} timed steps")
  for name, overrides in CONFIGS.items():
    for attention in args.attention.split(","):
      r = measure(overrides, args.steps, args.dtype, attention)
      print(
        f"{name}, attention={attention}: {r['params']:,} params | {r['s_per_step']:.3f} s/step | "
        f"{r['tokens_per_s']:,.0f} tokens/s | {r['tflops_per_device']:.4f} TFLOP/s/device"
      )


if __name__ == "__main__":
  main()
