"""A cross-tokenizer KD step against a same-tokenizer KD step of the same student, side by side.

  .venv/bin/python benchmarks/cross_tokenizer_step.py --teacher_tokenizer OUT/teacher \
    --student_tokenizer OUT/xtok/student_tokenizer [--steps 12 --skip 2 --repeats 3]

The teacher has SmolLM2-135M's shape (30 layers, width 576, vocabulary 49,152; random weights: the cost
does not depend on them) and reads its own tokenizer (`--teacher_tokenizer`, e.g. the main job's imported
teacher folder). The student has quickstart/cross_tokenizer_study.py's shape (4 layers, width 256, MLP
768). Programs, all on the same text (the Shakespeare corpus, 8 x 128 student tokens a step, float32):
- `same tokenizer`: the student on the teacher's tokenizer (its vocabulary 49,152), today's KD step;
- `gold`, `uld`: the student on its own tokenizer (`--student_tokenizer`, vocabulary 4,096) and the
  teacher on its own stream (up to 128 tokens a row, as many as the student: its larger vocabulary
  spends fewer tokens on the same text), the span-aligned mix and ULD alone.
Each program's step is timed alone (dispatch to result ready); the table gives each repeat's median over
steps skip+1 .. steps and the ratios to the same-tokenizer step; repeats alternate the programs, so a
shared machine's drifts hit all alike.

  .venv/bin/python benchmarks/cross_tokenizer_step.py --uld_only

times ULD alone (value and gradient, 512 rows, student 4,096 against teacher 49,152 logits): a full float
sort of both sides, the top-min(Vs, Vt) form the loss uses, and that form on one row in eight.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402

default_to_cpu_without_accelerator()  # libtpu is installed here for compiling only

import jax  # noqa: E402

from MaxText.config import load as load_config  # noqa: E402
from MaxText.data.input_pipeline import make_iterator  # noqa: E402
from MaxText.distill.teacher import abstract_teacher, cross_tokenizer_teacher  # noqa: E402
from MaxText.model import decoder as model_lib  # noqa: E402
from MaxText.parallel import sharding  # noqa: E402
from MaxText.training.runtime import build_corpus, to_global  # noqa: E402
from MaxText.training.state import init_state, make_layout  # noqa: E402
from MaxText.training.step import jit_train_step  # noqa: E402

TEACHER = "vocab_size=49152,emb_dim=576,num_decoder_layers=30,num_query_heads=9,num_kv_heads=3,head_dim=64,mlp_dim=1536"
STUDENT = {
  "emb_dim": 256,
  "num_decoder_layers": 4,
  "num_query_heads": 4,
  "num_kv_heads": 2,
  "head_dim": 64,
  "mlp_dim": 768,
}


def program(keys: dict, out_dir: str, steps: int):
  """(jitted step, state, teacher params, batches) of one configuration."""
  common = {"dtype": "float32", "max_target_length": 128, "per_device_batch_size": 8, "steps": 10_000, **STUDENT}
  common.update(base_output_directory=out_dir, use_kd=True, kd_alpha=0.5, kd_teacher_overrides=TEACHER)
  common.update(kd_teacher_parameters_path="random-initial-teacher", **keys)  # never read: random weights
  config = load_config(["base.yml"], common)
  mesh = sharding.create_mesh(config)
  batch_sharding = sharding.batch_sharding(mesh)
  data = make_iterator(config, build_corpus(config), "train", int(config.per_device_batch_size))
  batches = [to_global(next(data), batch_sharding) for _ in range(min(steps, 8))]
  with jax.set_mesh(mesh):
    layout = make_layout(config, mesh, None)
    cross = bool(config.kd_teacher_tokenizer_path)
    source, _ = cross_tokenizer_teacher(config, mesh) if cross else abstract_teacher(config, mesh)
    teacher_params = model_lib.init_params(source.config, source.param_shardings)
    step = jit_train_step(config, layout, source, batch_sharding)
    return {
      "mesh": mesh,
      "step": step,
      "state": init_state(config, layout),
      "teacher": teacher_params,
      "batches": batches,
    }


def timed_steps(prog: dict, steps: int) -> list[float]:
  times = []
  with jax.set_mesh(prog["mesh"]):
    for i in range(steps):
      start = time.perf_counter()
      prog["state"], metrics = prog["step"](prog["state"], prog["teacher"], prog["batches"][i % len(prog["batches"])])
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  return times


def uld_only(repeats: int) -> None:
  import jax.numpy as jnp
  import numpy as np

  from MaxText.losses.cross_vocab import uld_distance, uld_where_needed
  from MaxText.losses.targets import teacher_probs

  rng = np.random.default_rng(0)
  s = jnp.asarray(rng.normal(size=(512, 4096)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(512, 49152)) * 3, jnp.float32)
  needed = jnp.asarray(rng.random(512) < 0.125)

  def full_sort(x, y):
    q, p = jax.nn.softmax(x, axis=-1), teacher_probs(y, 1.0)[0]
    qs, ps = -jnp.sort(-q, axis=-1), -jnp.sort(-p, axis=-1)
    return jnp.sum(jnp.abs(ps[:, : qs.shape[1]] - qs), axis=-1) + jnp.sum(ps[:, qs.shape[1] :], axis=-1)

  forms = {
    "full float sort": full_sort,
    "top-min(Vs, Vt)": lambda x, y: uld_distance(x, y, 1.0),
    "1 row in 8": lambda x, y: uld_where_needed(x, y, 1.0, needed),
  }
  grads = {name: jax.jit(jax.grad(lambda x, y, f=f: f(x, y).sum())) for name, f in forms.items()}
  for g in grads.values():
    jax.block_until_ready(g(s, t))
  for repeat in range(repeats):
    cells = []
    for name, g in grads.items():
      start = time.perf_counter()
      jax.block_until_ready(g(s, t))
      cells.append(f"{name} {time.perf_counter() - start:.3f} s")
    print(f"repeat {repeat + 1}: " + " | ".join(cells))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--uld_only", action="store_true")
  parser.add_argument("--teacher_tokenizer", default="")
  parser.add_argument("--student_tokenizer", default="")
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--skip", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  if args.uld_only:
    uld_only(args.repeats)
    return
  hf = {"tokenizer_type": "huggingface"}
  own = {**hf, "tokenizer_path": args.student_tokenizer, "vocab_size": 4096}
  own.update(kd_teacher_tokenizer_path=args.teacher_tokenizer, kd_teacher_max_target_length=128)
  configs = {
    "same tokenizer": {**hf, "tokenizer_path": args.teacher_tokenizer, "vocab_size": 49152},
    "gold": {**own, "kd_cross_tokenizer_loss": "gold"},
    "uld": {**own, "kd_cross_tokenizer_loss": "uld"},
  }
  with tempfile.TemporaryDirectory() as out_dir:
    programs = {name: program(keys, out_dir, args.steps) for name, keys in configs.items()}
    print(f"{jax.devices()[0].platform}, jax {jax.__version__}; median ms over steps {args.skip + 1}-{args.steps}")
    print(f"{'repeat':<7}" + "".join(f"{name:>16}" for name in configs) + f"{'gold / same':>13}{'uld / same':>12}")
    ratios = {"gold": [], "uld": []}
    for repeat in range(args.repeats):
      ms = {name: statistics.median(timed_steps(p, args.steps)[args.skip :]) * 1e3 for name, p in programs.items()}
      for name in ratios:
        ratios[name].append(ms[name] / ms["same tokenizer"])
      cells = "".join(f"{ms[name]:>16.0f}" for name in configs)
      print(f"{repeat + 1:<7}{cells}{ratios['gold'][-1]:>13.3f}{ratios['uld'][-1]:>12.3f}")
  for name, values in ratios.items():
    print(
      f"{name} / same tokenizer: median {statistics.median(values):.3f} (range {min(values):.3f}-{max(values):.3f})"
    )


if __name__ == "__main__":
  main()
