"""The seed's distillation pair on one accelerator: this project's programs, tokens/s, MFU and memory.

  python3 benchmarks/gpu_bench.py --preset h200 --out results.jsonl      (one NVIDIA H100/H200)
  .venv/bin/python benchmarks/gpu_bench.py --preset cpu-smoke            (tiny shapes, the same code paths)

Rows, per batch shape (`h200`: 4 x 8192 then 1 x 8192 tokens): the student's CE step; the KD step
(forward KL, alpha 0.5, T 1); the KD step with teacher top-p 0.9 + OTHER bucket at T 2; the teacher's
forward alone (hidden states and the chunked bf16 unembedding, as the KD step computes them); the offline
KD step from a top-64 cache (the cache's fields ride in the batch, synthetic values). `h200`:
llama3.2-1b student (float32 master weights, bf16 compute, `attention=cudnn`), a random llama3.1-8b
teacher stored in bf16. benchmarks/torch_kd_peer.py times the PyTorch step at the same shapes.

FLOPs are counted as `training.metrics.flops_per_token` does: 6 per matmul parameter per token for a
training step (the unembedding included, the embedding lookup not) plus causal attention's QK^T and PV
at half the L x L square, 3 x that for forward + backward; a teacher's forward is a third of its
training count. Rematerialised recomputation is not counted (MFU is model FLOPs). The KD step's FLOPs
are the student's training FLOPs plus the teacher's forward. MFU is against the dense bf16 peak
(989 TFLOP/s on an H100/H200 SXM, or `--peak_tflops`).

Each program is compiled ahead of time (the compile's own memory analysis gives the program's bytes:
arguments + outputs + temporaries - donated), warmed up, then timed step by step (dispatch to result
ready); the table gives the median with the range. `--remat` lists the student's remat policies to try
in order: the first whose program fits the device's memory is used (on a CPU, the first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from MaxText.config.platform import default_to_cpu_without_accelerator  # noqa: E402

default_to_cpu_without_accelerator()  # libtpu may be installed for compiling only

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.kd_step import PEAK_BF16_TFLOPS  # noqa: E402
from MaxText import pyconfig  # noqa: E402
from MaxText.config import load as load_config  # noqa: E402
from MaxText.data.input_pipeline import make_iterator  # noqa: E402
from MaxText.distill.teacher import abstract_teacher, cached_teacher  # noqa: E402
from MaxText.losses.cross_entropy import project_logits  # noqa: E402
from MaxText.model import decoder as model_lib  # noqa: E402
from MaxText.parallel import sharding  # noqa: E402
from MaxText.training.metrics import flops_per_token  # noqa: E402
from MaxText.training.runtime import to_global  # noqa: E402
from MaxText.training.state import init_state, make_layout  # noqa: E402
from MaxText.training.step import jit_train_step  # noqa: E402

TINY_TEACHER = "emb_dim=128,num_decoder_layers=4,num_query_heads=4,num_kv_heads=2,head_dim=32,mlp_dim=256"


@dataclasses.dataclass(frozen=True)
class Preset:
  student: dict  # config keys of the student (and of every program)
  teacher_model: str  # kd_teacher_model_name
  teacher_overrides: str  # kd_teacher_overrides
  batches: tuple[int, ...]  # sequences per device, one table block each
  steps: int  # timed steps per program
  warmup: int
  remat: tuple[str, ...]  # the student's remat policies, first that fits
  attention_fallback: str = ""  # the kernel taken when the preset's fails to compile or run


PRESETS = {
  "h200": Preset(
    student={"model_name": "llama3.2-1b", "max_target_length": 8192, "dtype": "bfloat16", "attention": "cudnn"},
    teacher_model="llama3.1-8b",
    teacher_overrides="weight_dtype=bfloat16",  # the teacher's parameters are held in bf16 (kd_teacher_dtype)
    batches=(4, 1),
    steps=8,
    warmup=2,
    remat=("none", "save_dots", "full"),
    attention_fallback="flash",
  ),
  "cpu-smoke": Preset(
    student={
      "model_name": "default",
      "vocab_size": 512,
      "emb_dim": 64,
      "num_decoder_layers": 2,
      "num_query_heads": 4,
      "num_kv_heads": 2,
      "head_dim": 16,
      "mlp_dim": 128,
      "max_target_length": 128,
      "dtype": "bfloat16",
      "attention": "flash",
      "loss_chunk_size": 128,
    },
    teacher_model="default",
    teacher_overrides=f"{TINY_TEACHER},vocab_size=512,weight_dtype=bfloat16",
    batches=(2, 1),
    steps=3,
    warmup=1,
    remat=("none", "full"),
  ),
}
KD_T1 = {"kd_alpha": 0.5, "kd_temperature": 1.0}
ROWS = {  # row name -> (kind, KD flags)
  "CE step": ("ce", {}),
  "KD step: forward KL, alpha 0.5, T 1": ("kd", KD_T1),
  "KD step: top-p 0.9 + OTHER, T 2": (
    "kd",
    {"kd_alpha": 0.5, "kd_temperature": 2.0, "kd_top_p": 0.9, "kd_use_other_bucket": True},
  ),
  "teacher forward": ("forward", KD_T1),
  "offline KD step: top-64 cache": ("offline", KD_T1),
}
OFFLINE_TOP_K = 64
PROFILED_ROW = "KD step: forward KL, alpha 0.5, T 1"


def student_keys(preset: Preset, batch: int, remat: str) -> dict:
  return {
    "dataset_type": "synthetic",
    "steps": 10_000,
    **preset.student,
    "per_device_batch_size": batch,
    "remat_policy": remat,
  }


def kd_config(keys: dict, preset: Preset, kd_flags: dict, offline: bool, teacher_dtype: str = "bfloat16"):
  """A KD run's config; loaded without the file pre-flight: no teacher or cache file is read."""
  flags = {**kd_flags, "kd_teacher_dtype": teacher_dtype}
  if offline:
    flags["kd_offline_data_dir"] = "synthetic-top-k-cache"
  else:
    flags.update(
      kd_teacher_model_name=preset.teacher_model,
      kd_teacher_overrides=preset.teacher_overrides,
      kd_teacher_parameters_path="random-initial-teacher",
    )
  return load_config(["base.yml", *(f"{k}={v}" for k, v in flags.items())], {**keys, "use_kd": True})


def cached_fields(batch: dict, vocab: int, seed: int) -> dict:
  """A top-k cache's per-token fields as the cache reader yields them: values largest first (bf16), distinct
  ids, and the full-vocabulary log-sum-exp at T = 1 (consistent: above the top-k's own)."""
  rows, length = batch["inputs"].shape
  rng = np.random.default_rng(seed)
  values = -np.sort(-rng.normal(0.0, 3.0, (rows, length, OFFLINE_TOP_K)), axis=-1)
  offsets = rng.integers(0, vocab, (rows, length, 1))
  ids = (offsets + np.arange(OFFLINE_TOP_K) * (vocab // OFFLINE_TOP_K)) % vocab
  top_lse = np.log(np.exp(values - values[..., :1]).sum(-1)) + values[..., 0]
  lse = (top_lse + np.log1p(rng.uniform(0.05, 1.0, top_lse.shape)))[:, None, :]
  return {
    "teacher_values": values.astype(jnp.bfloat16),
    "teacher_ids": ids.astype(np.int32),
    "teacher_lse": lse.astype(np.float32),
  }


def teacher_forward_fn(teacher, chunk: int):
  """The teacher's work in a KD step alone: hidden states, then the unembedding chunk by chunk (bf16 matmul,
  float32 result, as the KD step's live chunk computes it), reduced to one number so nothing is kept."""
  graphdef = teacher.graphdef

  def forward(params, batch):
    model = model_lib.bind(graphdef, params)
    hidden = model(batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"]).hidden_BxLxD
    hidden_CxNxD = hidden.reshape(-1, chunk, hidden.shape[-1])
    w_DxV = model.output_matrix_DxV()
    lse = jax.lax.map(lambda h: jax.nn.logsumexp(project_logits(h, w_DxV), axis=-1).sum(), hidden_CxNxD)
    return lse.sum()

  return jax.jit(forward)


@dataclasses.dataclass
class Program:
  name: str
  compiled: object  # the compiled executable
  run: object  # one call with the next batch
  flops_per_token: float
  program_bytes: int
  remat: str
  compile_s: float


def _program_bytes(compiled) -> int:
  analysis = compiled.memory_analysis()
  if analysis is None:
    return 0
  return int(
    analysis.argument_size_in_bytes
    + analysis.output_size_in_bytes
    + analysis.temp_size_in_bytes
    - analysis.alias_size_in_bytes
  )


def device_bytes_limit() -> int | None:
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def device_peak_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


class Bench:
  """One batch shape: the synthetic batches, the teacher's random parameters, and the programs built on them."""

  def __init__(self, preset: Preset, batch: int):
    self.preset, self.batch = preset, batch
    # the shape's mesh, data and FLOPs (kernel-independent: each program sets its own kernel)
    base = pyconfig.from_dict({**student_keys(preset, batch, preset.remat[0]), "attention": "dot_product"})
    self.mesh = sharding.create_mesh(base)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    data = make_iterator(base, None, "train", int(base.per_device_batch_size * jax.device_count()))
    host_batches = [next(data) for _ in range(2)]
    self.batches = [to_global(b, self.batch_sharding) for b in host_batches]
    vocab = base.vocab_size
    self.cached_batches = [
      to_global({**b, **cached_fields(b, vocab, i)}, self.batch_sharding) for i, b in enumerate(host_batches)
    ]
    self.tokens_per_step = base.max_target_length * self.batches[0]["inputs"].shape[0]
    self.student_flops = flops_per_token(base)
    self.limit = device_bytes_limit()
    self.teacher_params = None
    self.attention = preset.student["attention"]

  def _teacher(self, config):
    teacher, _ = abstract_teacher(config, self.mesh)
    if self.teacher_params is None:  # one random teacher for every row of this shape
      self.teacher_params = model_lib.init_params(teacher.config, teacher.param_shardings)
    view = types.SimpleNamespace(**dataclasses.asdict(teacher.config))
    view.max_target_length = config.max_target_length
    return teacher, flops_per_token(view) / 3  # a forward is a third of training's count

  def build(self, name: str) -> Program:
    kind, kd_flags = ROWS[name]
    for remat in self.preset.remat:
      program = self._build(name, kind, kd_flags, remat)
      if self.limit is None or program.program_bytes <= 0.95 * self.limit or remat == self.preset.remat[-1]:
        return program
      print(f"  {name}: remat {remat} needs {program.program_bytes / 2**30:.1f} GiB; trying the next", flush=True)
    raise AssertionError("unreachable")

  def _build(self, name, kind, kd_flags, remat) -> Program:
    keys = {**student_keys(self.preset, self.batch, remat), "attention": self.attention}
    start = time.perf_counter()
    if kind == "forward":
      config = kd_config(keys, self.preset, kd_flags, offline=False)
      teacher, teacher_flops = self._teacher(config)
      fn = teacher_forward_fn(teacher, config.loss_chunk_size)
      compiled = fn.lower(self.teacher_params, self.batches[0]).compile()
      calls = iter(range(1 << 30))
      run = lambda: compiled(self.teacher_params, self.batches[next(calls) % 2])
      return Program(name, compiled, run, teacher_flops, _program_bytes(compiled), "-", time.perf_counter() - start)
    config = pyconfig.from_dict(keys) if kind == "ce" else kd_config(keys, self.preset, kd_flags, kind == "offline")
    flops, teacher_state, batches = self.student_flops, None, self.batches
    with jax.set_mesh(self.mesh):
      layout = make_layout(config, self.mesh, None)
      source = None
      if kind == "kd":
        source, teacher_flops = self._teacher(config)
        flops, teacher_state = flops + teacher_flops, self.teacher_params
      elif kind == "offline":
        source, batches = cached_teacher(config, 0), self.cached_batches
      step = jit_train_step(config, layout, source, self.batch_sharding)
      state = {"s": init_state(config, layout)}
      compiled = step.lower(state["s"], teacher_state, batches[0]).compile()
    calls = iter(range(1 << 30))

    def run():
      state["s"], metrics = compiled(state["s"], teacher_state, batches[next(calls) % 2])
      return metrics

    return Program(name, compiled, run, flops, _program_bytes(compiled), remat, time.perf_counter() - start)


def time_program(program: Program, steps: int, warmup: int) -> tuple[list[float], object]:
  """(seconds of each timed call, from dispatch until its outputs are ready; the last call's output)."""
  for _ in range(warmup):
    jax.block_until_ready(program.run())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    output = jax.block_until_ready(program.run())
    times.append(time.perf_counter() - start)
  return times, output


def loss_per_token(output) -> float | None:
  """A train step's loss per token from its summed metrics (None for the teacher's forward)."""
  if not isinstance(output, dict):
    return None
  return float(output.get("total_loss_sum", output.get("ce_sum"))) / max(float(output["tokens"]), 1.0)


def append_jsonl(path: str, row: dict) -> None:
  """One row as soon as it is measured, so a run cut short keeps what it measured."""
  if path:
    with open(path, "a") as f:
      f.write(json.dumps(row) + "\n")


def profile(program: Program, directory: str, steps: int = 2) -> None:
  """A `jax.profiler` trace of a few more steps (benchmarks/profile_summary.py reads it)."""
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    for _ in range(steps):
      jax.block_until_ready(program.run())


def measure(
  preset: Preset, batch: int, names: list[str], peak_tflops: float, out: str = "", profile_dir: str = ""
) -> list[dict]:
  bench = Bench(preset, batch)
  results = []
  for name in names:
    try:
      program = bench.build(name)
      times, output = time_program(program, preset.steps, preset.warmup)
    except Exception as error:  # e.g. a cuDNN too old for the ragged layout: the rows go on with the fallback
      if not preset.attention_fallback or bench.attention == preset.attention_fallback:
        raise
      reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
      print(f"  {name}: attention={bench.attention} failed ({reason}); {preset.attention_fallback} from here on")
      bench.attention = preset.attention_fallback
      program = bench.build(name)
      times, output = time_program(program, preset.steps, preset.warmup)
    if profile_dir and name == PROFILED_ROW:
      profile(program, profile_dir)
    results.append({**row_of(program, times, bench, peak_tflops), "loss_per_token": loss_per_token(output)})
    print(format_row(results[-1]), flush=True)
    append_jsonl(out, results[-1])
    del program  # frees its state before the next program compiles
  return results


def row_of(program: Program, times: list[float], bench: Bench, peak_tflops: float) -> dict:
  seconds = statistics.median(times)
  tokens = bench.tokens_per_step / jax.device_count()
  tflops = tokens * program.flops_per_token / seconds / 1e12
  return {
    "framework": "maxtext-kd (jax)",
    "row": program.name,
    "shape": f"{bench.batch} x {bench.preset.student['max_target_length']}",
    "median_ms": 1e3 * seconds,
    "min_ms": 1e3 * min(times),
    "max_ms": 1e3 * max(times),
    "tokens_per_s": tokens / seconds,
    "tflops": tflops,
    "mfu": tflops / peak_tflops if peak_tflops else None,
    "program_gib": program.program_bytes / 2**30,
    "process_peak_gib": (device_peak_bytes() or 0) / 2**30 or None,
    "remat": program.remat,
    "attention": bench.attention,
    "compile_s": program.compile_s,
  }


def format_row(r: dict) -> str:
  mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
  peak = f"{r['process_peak_gib']:.1f}" if r["process_peak_gib"] else "-"
  return (
    f"| {r['framework']} | {r['row']} | {r['shape']} | {r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f}) | "
    f"{r['tokens_per_s']:,.0f} | {mfu} | {r['program_gib']:.2f} | {peak} | {r['remat']} | {r['attention']} | "
    f"{r['compile_s']:.0f} |"
  )


HEADER = (
  "| framework | row | batch x length | ms/step median (range) | tokens/s | MFU | program GiB | process peak GiB "
  "| remat | attention | compile s |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


PEER_ROWS = {  # this project's row -> the PyTorch peer's row it is compared with
  "CE step": "CE step",
  "KD step: forward KL, alpha 0.5, T 1": "KD step: forward KL, alpha 0.5, T 1",
  "teacher forward": "teacher forward",
}


def side_by_side(results: list[dict]) -> str:
  """The measurements of both frameworks (JSON lines of this script and torch_kd_peer.py) as one table, then
  the targets: KD MFU, CE MFU, KD tokens/s against the peer's best KD row, KD time against CE + forward."""
  ours = {(r["row"], r["shape"]): r for r in results if r["framework"] != "pytorch"}
  peer = {(r["row"], r["shape"]): r for r in results if r["framework"] == "pytorch"}
  lines = [
    "| row | batch x length | tokens/s | MFU | program GiB | PyTorch tokens/s | PyTorch peak GiB | tokens/s ratio |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for (row, shape), r in ours.items():
    p = peer.get((PEER_ROWS.get(row, ""), shape))
    p_tokens = p.get("tokens_per_s") if p else None
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
    lines.append(
      f"| {row} | {shape} | {r['tokens_per_s']:,.0f} | {mfu} | {r['program_gib']:.1f} | "
      + (
        f"{p_tokens:,.0f} | {p['process_peak_gib'] or 0:.1f} | {r['tokens_per_s'] / p_tokens:.2f}x |"
        if p_tokens
        else "- | - | - |"
      )
    )
  for (row, shape), p in peer.items():
    if row not in PEER_ROWS.values():
      lines.append(
        f"| PyTorch {row} | {shape} | | | | {p.get('tokens_per_s', 0):,.0f} | {p.get('process_peak_gib') or 0:.1f} | |"
      )
  lines += ["", *target_lines(ours, peer)]
  return "\n".join(lines)


def target_lines(ours: dict, peer: dict) -> list[str]:
  out = []
  for shape in sorted({shape for _, shape in ours}):
    get = lambda row, shape=shape: ours.get((row, shape))
    ce, kd, fwd = get("CE step"), get("KD step: forward KL, alpha 0.5, T 1"), get("teacher forward")
    if ce and ce.get("mfu") is not None:
      out.append(f"{shape}: CE step MFU {100 * ce['mfu']:.1f}% (target >= 45%)")
    if kd and kd.get("mfu") is not None:
      out.append(f"{shape}: KD step MFU {100 * kd['mfu']:.1f}% (target >= 40%)")
    if ce and kd and fwd:
      ratio = kd["median_ms"] / (ce["median_ms"] + fwd["median_ms"])
      out.append(f"{shape}: KD step / (CE step + teacher forward) = {ratio:.3f} (target <= 1.15)")
    kd_peers = [
      p["tokens_per_s"] for (row, s), p in peer.items() if s == shape and row.startswith("KD") and "tokens_per_s" in p
    ]
    if kd and kd_peers:
      out.append(
        f"{shape}: KD tokens/s / PyTorch's best KD step = {kd['tokens_per_s'] / max(kd_peers):.2f}x (target >= 1.3x)"
      )
  return out


def peak_for_device(override: float) -> float:
  kind = jax.devices()[0].device_kind
  return override or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), 0.0)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="h200")
  parser.add_argument("--cpu-smoke", action="store_true", help="the same as --preset cpu-smoke")
  parser.add_argument("--batches", default="", help="comma list of sequences per device (default: the preset's)")
  parser.add_argument("--rows", default="", help="comma list of row numbers 1-5 (default: all)")
  parser.add_argument("--steps", type=int, default=0, help="timed steps per program (default: the preset's)")
  parser.add_argument("--remat", default="", help="comma list of remat policies to try in order")
  parser.add_argument("--peak_tflops", type=float, default=0.0, help="per device; known for H100/H200")
  parser.add_argument("--out", default="", help="append one JSON line per row to this file")
  parser.add_argument("--profile_dir", default="", help="trace 2 more KD steps of the first shape here")
  parser.add_argument("--table", default="", help="print the side-by-side table of this JSON-lines file and exit")
  args = parser.parse_args(argv)
  if args.table:
    with open(args.table) as f:
      print(side_by_side([json.loads(line) for line in f if line.strip()]))
    return []
  preset = PRESETS["cpu-smoke" if args.cpu_smoke else args.preset]
  preset = dataclasses.replace(
    preset,
    batches=tuple(int(b) for b in args.batches.split(",")) if args.batches else preset.batches,
    steps=args.steps or preset.steps,
    remat=tuple(args.remat.split(",")) if args.remat else preset.remat,
  )
  names = list(ROWS)
  if args.rows:
    names = [names[int(i) - 1] for i in args.rows.split(",")]
  peak = peak_for_device(args.peak_tflops)
  device = jax.devices()[0]
  print(f"{device.platform} {device.device_kind} x {jax.device_count()}, jax {jax.__version__}; peak {peak} TFLOP/s")
  print(HEADER, flush=True)
  results = []
  for batch in preset.batches:
    profile_dir = args.profile_dir if batch == preset.batches[0] else ""
    results += measure(preset, batch, names, peak, args.out, profile_dir)
  return results


if __name__ == "__main__":
  main()
