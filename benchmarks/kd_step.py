"""A whole KD train step against the same student's CE step (and the teacher's forward), side by side.

  .venv/bin/python benchmarks/kd_step.py --config tiny-anchor [--steps 210 --skip 10 --repeats 3]
  .venv/bin/python benchmarks/kd_step.py --config demo \
    --kd_flags kd_top_p=0.9,kd_use_other_bucket=true,kd_temperature=2.0

Configs:
- `tiny-anchor`: student width 64, 2 layers, 4/4 heads of 16, MLP 128; teacher width 128, 4 layers, 4/4
  heads of 32, MLP 256; vocabulary 1024; batch 4 x 128; alpha 0.5, T 1 (the issue tracker's anchor).
- `demo`: the demo model as student and as teacher (weights scaled by 1.01: a distinct teacher), batch 8 x 128.
- `main-job`: the main job's shapes, random weights: a SmolLM2-135M teacher (30 layers, width 576, MLP 1536,
  vocabulary 49152) and a 20-layer MLP-1024 student of its family, 8 x 256 tokens, alpha 0.5, T 1; with
  `--peak_tflops` set to benchmarks/matmul_ceiling.py's step mix it prints the CPU's MFU.
- `gpu-1b-8b` (for a GPU): llama3.2-1b student, random llama3.1-8b teacher stored and run in bf16, 1 x 8192
  tokens, bf16, `attention=cudnn`, T 2; `--steps 30 --skip 5` is plenty there.
With `--peak_tflops` (or on an H100/H200, whose dense bf16 peak of 989 TFLOP/s is known) it also prints
tokens/s and MFU per program: the student's training FLOPs (6 per parameter per token plus causal
attention, `flops_per_token`) and, for the KD step, the teacher's forward third of its own.
Everything else is base.yml (remat auto, resolved as the trainer does; bfloat16 compute with float32
weights: `--set dtype=float32` for float32; one chunk of loss). The three programs are jitted on
the same synthetic batches and each step is timed alone (dispatch to result ready); the table gives the
median over steps skip+1 .. steps of each, per repeat, and the ratios of the medians. Repeats alternate
the programs, so drifts of a shared machine hit all three alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402

default_to_cpu_without_accelerator()  # libtpu is installed here for compiling only

import jax  # noqa: E402

from benchmarks.kd_loss import processor  # noqa: E402
from MaxText import pyconfig  # noqa: E402
from MaxText.config import load as load_config  # noqa: E402
from MaxText.data.input_pipeline import make_iterator  # noqa: E402
from MaxText.distill.teacher import abstract_teacher  # noqa: E402
from MaxText.model import decoder as model_lib  # noqa: E402
from MaxText.parallel import sharding  # noqa: E402
from MaxText.training import remat  # noqa: E402
from MaxText.training.metrics import flops_per_token  # noqa: E402
from MaxText.training.runtime import to_global  # noqa: E402
from MaxText.training.state import init_state, make_layout  # noqa: E402
from MaxText.training.step import jit_train_step  # noqa: E402

CONFIGS = {
  "tiny-anchor": {
    "student": {
      "vocab_size": 1024,
      "emb_dim": 64,
      "num_decoder_layers": 2,
      "num_query_heads": 4,
      "num_kv_heads": 4,
      "head_dim": 16,
      "mlp_dim": 128,
      "per_device_batch_size": 4,
    },
    "teacher": "vocab_size=1024,emb_dim=128,num_decoder_layers=4,num_query_heads=4,num_kv_heads=4,head_dim=32,"
    "mlp_dim=256",
    "kd_flags": "kd_alpha=0.5,kd_temperature=1.0",
  },
  "demo": {"student": {"model_name": "demo", "per_device_batch_size": 8}, "teacher": "", "kd_flags": ""},
  "main-job": {  # the main job's shapes: a SmolLM2-135M teacher, a 20-layer MLP-1024 student of its family
    "student": {
      "model_name": "smollm2-135m",
      "num_decoder_layers": 20,
      "mlp_dim": 1024,
      "per_device_batch_size": 8,
      "max_target_length": 256,
    },
    "teacher": "num_decoder_layers=30",  # the preset's own: a random teacher of that shape
    "teacher_model": "smollm2-135m",
    "kd_flags": "kd_alpha=0.5,kd_temperature=1.0",
  },
  "gpu-1b-8b": {
    "student": {
      "model_name": "llama3.2-1b",
      "per_device_batch_size": 1,
      "max_target_length": 8192,
      "dtype": "bfloat16",
      "attention": "cudnn",
    },
    "teacher": "weight_dtype=bfloat16",
    "teacher_model": "llama3.1-8b",
    "kd_flags": "kd_alpha=0.5,kd_temperature=2.0,kd_teacher_dtype=bfloat16",
  },
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense, per GPU (SXM)


def _step_seconds(fn, batches, steps: int) -> list[float]:
  """Seconds of each call, from dispatch until its outputs are ready."""
  times = []
  for i in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(batches[i % len(batches)]))
    times.append(time.perf_counter() - start)
  return times


class Programs:
  """The CE step, the KD step and the teacher forward of one config, each with its own state."""

  def __init__(self, preset: dict, kd_flags: str, steps: int, settings: str = ""):
    common = {"dataset_type": "synthetic", "max_target_length": 128, "steps": 10_000, **preset["student"]}
    common.update(kv.split("=", 1) for kv in settings.split(",") if kv)
    flags = dict(kv.split("=", 1) for kv in (kd_flags or preset["kd_flags"]).split(",") if kv)
    if preset["teacher"]:  # a random teacher of that shape: the path is never read (abstract_teacher below)
      flags.update(kd_teacher_overrides=preset["teacher"], kd_teacher_parameters_path="random-initial-teacher")
    if preset.get("teacher_model"):
      flags.update(kd_teacher_model_name=preset["teacher_model"])
    self.flags = flags
    # loaded without the file pre-flight: the teacher path is never read (random parameters below)
    self.kd_config = load_config(["base.yml", *(f"{k}={v}" for k, v in flags.items())], {**common, "use_kd": True})
    ce_config = pyconfig.from_dict(common)
    mesh = sharding.create_mesh(ce_config)
    batch_sharding = sharding.batch_sharding(mesh)
    data = make_iterator(ce_config, None, "train", int(ce_config.per_device_batch_size * jax.device_count()))
    self.batches = [to_global(next(data), batch_sharding) for _ in range(min(steps, 32))]
    self.mesh = mesh
    with jax.set_mesh(mesh):
      ce_layout = make_layout(ce_config, mesh, None)
      kd_layout = make_layout(self.kd_config, mesh, pyconfig.feature_alignment(self.kd_config))
      teacher, _ = abstract_teacher(self.kd_config, mesh)
      teacher_params = model_lib.init_params(teacher.config, teacher.param_shardings)
      if not preset["teacher"]:  # self-distillation from the initial student would be a KL of 0: perturb
        teacher_params = jax.tree.map(lambda x: x * 1.01, teacher_params)
      # remat_policy=auto resolved as the trainer resolves it; the graphdefs then carry the chosen policy
      ce_config, _ = remat.resolve(ce_config, ce_layout)
      self.kd_config, _ = remat.resolve(self.kd_config, kd_layout, teacher_params)
      ce_layout = make_layout(ce_config, mesh, None)
      kd_layout = make_layout(self.kd_config, mesh, pyconfig.feature_alignment(self.kd_config))
      print(f"remat_policy: CE {ce_config.remat_policy}, KD {self.kd_config.remat_policy}", flush=True)
      self.state = {"ce": init_state(ce_config, ce_layout), "kd": init_state(self.kd_config, kd_layout)}
      self.ce_step = jit_train_step(ce_config, ce_layout, None, batch_sharding)
      self.kd_step = jit_train_step(self.kd_config, kd_layout, teacher, batch_sharding)
    graphdef = teacher.graphdef

    @jax.jit
    def forward(params, batch):
      model = model_lib.bind(graphdef, params)
      return model.logits(batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"]).sum()

    self.teacher_params, self.forward = teacher_params, forward
    student_flops = flops_per_token(ce_config)
    teacher_view = types.SimpleNamespace(**dataclasses.asdict(teacher.config))
    teacher_view.max_target_length = ce_config.max_target_length
    teacher_forward_flops = flops_per_token(teacher_view) / 3  # training counts forward + backward = 3 forwards
    self.flops_per_token = {
      "CE step": student_flops,
      "KD step": student_flops + teacher_forward_flops,
      "teacher forward": teacher_forward_flops,
    }
    self.tokens_per_step = ce_config.max_target_length * self.batches[0]["inputs"].shape[0]

  def run(self, name: str, batch):
    if name == "teacher forward":
      return self.forward(self.teacher_params, batch)
    step, key = (self.ce_step, "ce") if name == "CE step" else (self.kd_step, "kd")
    self.state[key], metrics = step(self.state[key], self.teacher_params if key == "kd" else None, batch)
    return metrics


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny-anchor")
  parser.add_argument("--steps", type=int, default=210)
  parser.add_argument("--skip", type=int, default=10, help="leading steps left out (compile, warm-up)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--kd_flags", default="", help="key=value,... over the config's KD flags")
  parser.add_argument("--set", default="", help="key=value,... over the config's keys, for all three programs")
  parser.add_argument("--peak_tflops", type=float, default=0.0, help="per device, for MFU (0: known GPUs only)")
  parser.add_argument("--remat_rounds", type=int, default=0, help="instead: CE and KD under remat none and full, "
                      "interleaved, this many rounds")  # fmt: skip
  args = parser.parse_args()
  if args.remat_rounds:
    return remat_rounds(args)
  programs = Programs(CONFIGS[args.config], args.kd_flags, args.steps, args.set)
  names = ("CE step", "KD step", "teacher forward")
  print(f"{jax.devices()[0].platform} ({processor()}), jax {jax.__version__}; config {args.config} {args.set}")
  print(f"KD flags: {programs.flags}")
  print(f"median ms over steps {args.skip + 1}-{args.steps}, {args.repeats} repeats")
  print(f"{'repeat':<7} {'CE step':>8} {'KD step':>8} {'teacher':>8} {'KD / CE':>8} {'KD / (CE + teacher)':>20}")
  rows, all_medians = [], []
  with jax.set_mesh(programs.mesh):
    for repeat in range(args.repeats):
      medians = {}
      for name in names:
        times = _step_seconds(lambda b, n=name: programs.run(n, b), programs.batches, args.steps)
        medians[name] = statistics.median(times[args.skip :]) * 1e3
      ce, kd, fwd = (medians[n] for n in names)
      rows.append((kd / ce, kd / (ce + fwd)))
      all_medians.append(medians)
      print(f"{repeat + 1:<7} {ce:>8.2f} {kd:>8.2f} {fwd:>8.2f} {kd / ce:>8.3f} {kd / (ce + fwd):>20.3f}")
  for i, label in enumerate(("KD / CE", "KD / (CE + teacher forward)")):
    values = [r[i] for r in rows]
    print(f"{label}: median {statistics.median(values):.3f} (range {min(values):.3f}-{max(values):.3f})")
  _print_utilisation(programs, all_medians, args.peak_tflops)


def remat_rounds(args) -> None:
  """The CE and KD steps compiled under remat_policy none and full in one process, taking turns each round;
  the median ms of each program's steps after --skip, per round, and full / none."""
  policies = ("none", "full")
  settings = lambda policy: ",".join(s for s in (args.set, f"remat_policy={policy}") if s)
  programs = {p: Programs(CONFIGS[args.config], args.kd_flags, args.steps, settings(p)) for p in policies}
  print(f"{jax.devices()[0].platform} ({processor()}), jax {jax.__version__}; config {args.config} {args.set}")
  print("| round | CE none | CE full | KD none | KD full | CE full / none | KD full / none |")
  print("|---|---|---|---|---|---|---|")
  ratios = {"CE step": [], "KD step": []}
  for round_ in range(args.remat_rounds):
    ms = {}
    for name in ratios:
      for policy, program in programs.items():
        with jax.set_mesh(program.mesh):
          times = _step_seconds(lambda b, n=name, pr=program: pr.run(n, b), program.batches, args.steps)
        ms[name, policy] = statistics.median(times[args.skip :]) * 1e3
      ratios[name].append(ms[name, "full"] / ms[name, "none"])
    cells = " | ".join(f"{ms[n, p]:.0f} ms" for n in ratios for p in policies)
    print(f"| {round_ + 1} | {cells} | {ratios['CE step'][-1]:.3f} | {ratios['KD step'][-1]:.3f} |", flush=True)
  for name, values in ratios.items():
    print(f"{name} full / none: median {statistics.median(values):.3f} (range {min(values):.3f}-{max(values):.3f})")


def _print_utilisation(programs: Programs, all_medians: list[dict], peak_tflops: float) -> None:
  """Tokens/s per device and MFU of each program, from the median of its per-repeat medians."""
  kind = jax.devices()[0].device_kind
  peak = peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), 0.0)
  tokens = programs.tokens_per_step / jax.device_count()
  for name, flops in programs.flops_per_token.items():
    ms = statistics.median(m[name] for m in all_medians)
    tflops = tokens * flops / (ms / 1e3) / 1e12
    mfu = f", MFU {100 * tflops / peak:.1f}% of {peak:.3g}" if peak else ""
    print(f"{name}: {tokens / (ms / 1e3):,.0f} tokens/s per device, {tflops:.3g} TFLOP/s{mfu} ({kind})")


if __name__ == "__main__":
  main()
