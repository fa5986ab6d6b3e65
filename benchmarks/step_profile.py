"""Where the main job's CE or KD step spends its time, by op class, in this project (a `jax.profiler` trace)
and in PyTorch under `torch.compile` (`torch.profiler`), side by side, at the same shapes on the CPU.

  .venv/bin/python benchmarks/step_profile.py [--row ce|kd] [--steps 2] [--torch eager|compile]

Shapes are benchmarks/torch_kd_peer.py's `main-job` preset (float32; the project with the main job's
`remat_policy=none`). Each framework runs in a process of its own, warms up (compiles), then profiles
`--steps` steps. Classes:
- matmul (layers): the projections and the MLP's products, forward and backward;
- matmul (unembedding): the products with the 49152-word output matrix;
- attention: scores, softmax and their backward (every op on [batch, heads, ...] arrays in the project);
- loss: softmax, log-sum-exp, CE and KL over the vocabulary, and their backward, outside the products;
- layout copies: transposes XLA:CPU materialises so that a weight gradient's product gets its layout
  (torch: `aten::copy_`);
- optimizer: AdamW (the project: what runs outside the layer loops; torch: ops under `Optimizer.step`);
- norms and elementwise: everything else (RMSNorm, RoPE, SwiGLU, residual adds; in torch the Inductor
  kernels that fuse them, and gradient zeroing).
On XLA:CPU each op appears once in the trace, on the thread that runs it; independent ops may run at the
same time (the teacher's and the student's products in a KD step), so the durations can add up to more
than the wall time. The table gives each class its share of the summed durations, times the measured
step time (torch's profiler slows its step, so its step time is the profiled one).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CLASSES = (
  "matmul (layers)",
  "matmul (unembedding)",
  "attention",
  "loss",
  "layout copies",
  "optimizer",
  "norms and elementwise",
)
VOCAB = "49152"
TRACE_WRAPPERS = ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "end:", "while", "call")


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str, list[str]]]:
  """{instruction: (its computation, its definition, the definitions in the computation it calls)}."""
  computations, current, found = collections.defaultdict(list), "", {}
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%(\S+) ", line)
    if header and line.rstrip().endswith("{"):
      current = header.group(1)
      continue
    instruction = re.match(r"\s+(?:ROOT )?%(\S+) = (.*)", line)
    if instruction:
      found[instruction.group(1)] = (current, instruction.group(2))
      computations[current].append(instruction.group(2))
  entry = re.search(r"^ENTRY %(\S+) ", hlo_text, re.M).group(1)
  result = {}
  for name, (computation, definition) in found.items():
    called = re.search(r"calls=%([^,\s]+)", definition)
    body = computations.get(called.group(1), []) if called else []
    result[name] = ("ENTRY" if computation == entry else computation, definition, body)
  return result


def project_class(name: str, computation: str, definition: str, body: list[str]) -> str:
  if name.startswith("wrapped_broadcast"):  # zeroed buffers (the scan's stacked gradients): not attention's
    return "norms and elementwise"
  shape = re.match(r"\(?(\w+\[[\d,]*\])", definition)
  dims = shape.group(1).split("[")[1].rstrip("]").split(",") if shape else []
  is_dot = name.startswith(("ynn_fusion", "xnn_fusion", "dot")) or any(" dot(" in op for op in body)
  if is_dot:
    if len(dims) >= 4:
      return "attention"
    touches_vocab = VOCAB in dims or VOCAB in definition.split("fusion(")[0] or any(VOCAB in op for op in body)
    return "matmul (unembedding)" if touches_vocab else "matmul (layers)"
  if len(dims) >= 4:
    return "attention"
  if VOCAB in dims or any(VOCAB in op.split("=")[0] for op in body):
    return "loss"
  if computation == "ENTRY":
    return "optimizer"
  if any(" transpose(" in op for op in body) or " transpose(" in definition:
    return "layout copies"
  return "norms and elementwise"


def project_profile(row: str, steps: int) -> dict:
  """Class -> seconds per step of the project's step, from a profiler trace of `steps` steps."""
  import jax

  from benchmarks.kd_step import CONFIGS, Programs

  programs = Programs(CONFIGS["main-job"], "", steps + 2, "dtype=float32,remat_policy=none")
  name = "CE step" if row == "ce" else "KD step"
  step, key = (programs.ce_step, "ce") if row == "ce" else (programs.kd_step, "kd")
  with jax.set_mesh(programs.mesh):
    teacher = programs.teacher_params if key == "kd" else None
    hlo_text = step.lower(programs.state[key], teacher, programs.batches[0]).compile().as_text()
    for i in range(2):
      jax.block_until_ready(programs.run(name, programs.batches[i]))
    with tempfile.TemporaryDirectory() as trace_dir:
      start = time.perf_counter()
      with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for i in range(steps):
          jax.block_until_ready(programs.run(name, programs.batches[i]))
      seconds = (time.perf_counter() - start) / steps
      events = _trace_events(trace_dir)
  instructions = hlo_instructions(hlo_text)
  totals = collections.Counter()
  for event_name, microseconds in events:
    if event_name in instructions:
      totals[project_class(event_name, *instructions[event_name])] += microseconds
    else:
      totals["norms and elementwise"] += microseconds
  return {"step_s": seconds, "classes": _scaled(totals, seconds), "framework": f"jax {jax.__version__}"}


def _trace_events(trace_dir: str) -> list[tuple[str, float]]:
  """(op name, microseconds) of every op XLA:CPU ran, from the trace's worker threads."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))[-1]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  threads = {
    (e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
  }
  return [
    (e["name"], float(e.get("dur", 0.0)))
    for e in events
    if e.get("ph") == "X"
    and "XLAEigen" in threads.get((e["pid"], e["tid"]), "")
    and not e["name"].startswith(TRACE_WRAPPERS)
  ]


def torch_class(key: str, shapes: str, under_optimizer: bool) -> str:
  if under_optimizer:
    return "optimizer"
  if key in ("aten::mm", "aten::addmm", "aten::bmm"):
    return "matmul (unembedding)" if VOCAB in shapes else "matmul (layers)"
  if "scaled_dot_product" in key or "attention" in key:
    return "attention"
  if any(word in key for word in ("log_softmax", "nll_loss", "logsumexp", "cross_entropy", "kl_div")):
    return "loss"
  if key in ("aten::fill_", "aten::zero_"):  # gradient buffers zeroed
    return "norms and elementwise"
  if VOCAB in shapes:  # the KL's exp, subtract, multiply and sum over [tokens, vocabulary], run eagerly
    return "loss"
  if key == "aten::copy_":
    return "layout copies"
  return "norms and elementwise"


def torch_profile(row: str, steps: int, mode: str) -> dict:
  import torch

  from benchmarks.torch_kd_peer import PRESETS, Peer, hf_models

  torch.manual_seed(0)
  student, teacher = hf_models(PRESETS["main-job"], "cpu", teacher_dtype=torch.float32)
  optimizer = torch.optim.AdamW(student.parameters(), lr=3e-4)
  if mode == "compile":
    student, teacher = torch.compile(student), torch.compile(teacher)
  peer = Peer(student, teacher, optimizer, "cpu", autocast_dtype=None)
  tokens = torch.randint(0, int(VOCAB), (8, PRESETS["main-job"].student["max_target_length"] + 1))
  data = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
  step = peer.ce_step if row == "ce" else peer.kd_step
  for _ in range(2):
    step(*data)
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
    start = time.perf_counter()
    for _ in range(steps):
      step(*data)
    seconds = (time.perf_counter() - start) / steps
  optimizer_ids = _optimizer_event_ids(profile.events())
  totals = collections.Counter()
  for event in profile.events():
    if event.name.startswith(("Optimizer.", "## Call CompiledFxGraph")) and event.id not in optimizer_ids:
      totals["norms and elementwise"] += event.self_cpu_time_total  # Inductor's fused kernels run in its self time
      continue
    shapes = str(event.input_shapes)
    totals[torch_class(event.name, shapes, event.id in optimizer_ids)] += event.self_cpu_time_total
  return {"step_s": seconds, "classes": _scaled(totals, seconds), "framework": f"torch {torch.__version__} {mode}"}


def _optimizer_event_ids(events) -> set:
  """Ids of the events inside `Optimizer.step` (the step and everything under it)."""
  found = set()
  for event in events:
    if event.name.startswith("Optimizer.step"):
      stack = [event]
      while stack:
        e = stack.pop()
        found.add(e.id)
        stack.extend(e.cpu_children)
  return found


def _scaled(totals: collections.Counter, step_seconds: float) -> dict:
  """The class sums scaled to sum to the step's wall time (their shares, in seconds per step)."""
  total = sum(totals.values()) or 1.0
  return {name: step_seconds * totals.get(name, 0.0) / total for name in CLASSES}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--row", choices=("ce", "kd"), default="kd")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--torch", choices=("eager", "compile"), default="compile")
  parser.add_argument("--only", choices=("project", "torch"), default="", help="one side, as JSON (internal)")
  args = parser.parse_args()
  if args.only:
    result = (
      project_profile(args.row, args.steps)
      if args.only == "project"
      else torch_profile(args.row, args.steps, args.torch)
    )
    print("RESULT " + json.dumps(result))
    return
  sides = [_side(side, args) for side in ("project", "torch")]
  print(f"{args.row.upper()} step, main-job shapes, float32; seconds per step (share)")
  print(f"| class | {sides[0]['framework']} | {sides[1]['framework']} |\n|---|---|---|")
  for name in CLASSES:
    cells = [f"{s['classes'][name]:.2f} ({100 * s['classes'][name] / s['step_s']:.0f}%)" for s in sides]
    print(f"| {name} | {cells[0]} | {cells[1]} |")
  print(f"| whole step | {sides[0]['step_s']:.2f} | {sides[1]['step_s']:.2f} |")


def _side(side: str, args) -> dict:
  command = [sys.executable, __file__, "--only", side, "--row", args.row, "--steps", str(args.steps)]
  output = subprocess.run([*command, "--torch", args.torch], capture_output=True, text=True, check=True).stdout
  return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])


if __name__ == "__main__":
  main()
