"""A whole KD train step against (student CE step + teacher forward), side by side, at the demo config.

  .venv/bin/python benchmarks/kd_step.py [--steps 10] [--teacher_overrides emb_dim=256,num_decoder_layers=6]

All three are jitted on the same synthetic batches; the first (compiling) call is excluded. The
teacher forward is the teacher's decoder plus its output projection (its logits), which is what a
KD step must at least add to a CE step.
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
from MaxText.distill.schedules import step_metrics  # noqa: E402
from MaxText.distill.teacher import load_live_teacher  # noqa: E402
from MaxText.model import decoder as model_lib  # noqa: E402
from MaxText.parallel import sharding  # noqa: E402
from MaxText.training.runtime import to_global  # noqa: E402
from MaxText.training.state import init_state, make_layout  # noqa: E402
from MaxText.training.step import make_train_step  # noqa: E402


def _timed(fn, args_per_call, repeats):
  result = fn(*args_per_call(0))
  jax.block_until_ready(result)
  start = time.perf_counter()
  for i in range(repeats):
    result = fn(*args_per_call(i + 1))
  jax.block_until_ready(result)
  return (time.perf_counter() - start) / repeats


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--kd_flags", default="kd_top_p=0.9,kd_use_other_bucket=true,kd_temperature=2.0")
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()
  flags = dict(kv.split("=", 1) for kv in args.kd_flags.split(",") if kv)
  common = {
    "model_name": "demo",
    "dataset_type": "synthetic",
    "per_device_batch_size": 8,
    "max_target_length": 128,
    "dtype": args.dtype,
    "steps": 1000,
    "remat_policy": "none",
  }
  config = pyconfig.initialize(["base.yml", *(f"{k}={v}" for k, v in flags.items())], {**common, "use_kd": True})
  plain = pyconfig.from_dict(common)
  mesh = sharding.create_mesh(config)
  alignment = pyconfig.feature_alignment(config)
  layout = make_layout(config, mesh, alignment)
  batch_sharding = sharding.batch_sharding(mesh)
  data = make_iterator(config, None, "train", 8)
  batches = [to_global(next(data), batch_sharding) for _ in range(args.steps + 1)]
  teacher, teacher_params = load_live_teacher(config, mesh)
  teacher_params = jax.tree.map(lambda x: x * 1.01, teacher_params)  # a distinct teacher, same architecture

  with jax.set_mesh(mesh):
    kd_step = jax.jit(
      make_train_step(
        config,
        layout.tx,
        make_loss_fn(config, layout.graphdef, teacher, alignment),
        step_metrics(config, alignment is not None),
      ),
      donate_argnums=(0,),
    )

    @jax.jit
    def teacher_forward(params, batch):
      model = model_lib.bind(teacher.graphdef, params)
      return model.logits(batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"]).sum()

    plain_layout = make_layout(plain, mesh, None)  # without the feature head a KD layout may carry
    ce_loss = make_loss_fn(plain, plain_layout.graphdef)
    ce_step = jax.jit(make_train_step(plain, plain_layout.tx, ce_loss), donate_argnums=(0,))
    state = {"s": init_state(plain, plain_layout)}

    def ce_args(i):
      return state["s"], None, batches[i % len(batches)]

    def run_ce(*a):
      state["s"], metrics = ce_step(*a)
      return metrics

    ce = _timed(run_ce, ce_args, args.steps)
    state["s"] = init_state(config, layout)

    def run_kd(*a):
      state["s"], metrics = kd_step(*a)
      return metrics

    kd = _timed(run_kd, lambda i: (state["s"], teacher_params, batches[i % len(batches)]), args.steps)
    fwd = _timed(teacher_forward, lambda i: (teacher_params, batches[i % len(batches)]), args.steps)
  print(f"demo config, batch 8 x 128, {args.dtype}, KD flags {flags}")
  print(f"CE step {ce * 1e3:.1f} ms | teacher forward {fwd * 1e3:.1f} ms | KD step {kd * 1e3:.1f} ms")
  print(f"KD step / (CE step + teacher forward) = {kd / (ce + fwd):.3f}")


if __name__ == "__main__":
  main()
