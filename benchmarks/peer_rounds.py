"""Interleaved rounds of this project's CE and KD steps against PyTorch's, eager and `torch.compile`d, on the CPU.

  .venv/bin/python benchmarks/torch_kd_peer.py --preset main-job --rounds 5 [--dtype bfloat16] [--set KEY=V,..]

Each framework runs in a worker process of its own (so neither one's thread pool or allocator sits in the
other's way, and each process's peak RSS is its own); the parent asks one worker at a time for one row's
steps, so the rows take turns within every round and a drift of the shared machine hits all of them. A
round times `--steps` steps of every row (each row warmed up, i.e. compiled, before the first round) and
keeps the median; the table prints every round, then the median over rounds with its range, and the
ratios taken within each round. The project runs the main job's keys (`dtype=float32,remat_policy=none`;
`--dtype bfloat16` switches both sides to bf16 compute with float32 weights, torch through autocast);
torch runs transformers' Llama with SDPA attention and the same 0.5 CE + 0.5 forward KL at T = 1.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time

PROJECT_ROWS = ("project CE", "project KD")
TORCH_ROWS = ("torch eager CE", "torch eager KD", "torch.compile CE", "torch.compile KD")
RATIOS = (  # (label, numerator row, denominator row): > 1 means the project is faster
  ("KD: project / torch.compile", "torch.compile KD", "project KD"),
  ("CE: project / torch.compile", "torch.compile CE", "project CE"),
  ("KD: project / torch eager", "torch eager KD", "project KD"),
  ("CE: project / torch eager", "torch eager CE", "project CE"),
)


def _project_worker(conn, dtype: str, settings: str) -> None:
  """Serves the project's rows: the main job's programs from benchmarks/kd_step.py."""
  import jax

  from benchmarks.kd_step import CONFIGS, Programs

  keys = f"dtype={dtype},remat_policy=none" + (f",{settings}" if settings else "")
  programs = Programs(CONFIGS["main-job"], "", 8, keys)
  rows = {"project CE": "CE step", "project KD": "KD step"}
  with jax.set_mesh(programs.mesh):
    step = lambda row, i: jax.block_until_ready(programs.run(rows[row], programs.batches[i % len(programs.batches)]))
    _serve(conn, step, f"jax {jax.__version__}, {keys}")


def _torch_worker(conn, dtype: str) -> None:
  """Serves torch's rows: eager, then the same modules under torch.compile (they share parameters)."""
  import torch

  from benchmarks.torch_kd_peer import PRESETS, Peer, hf_models

  torch.manual_seed(0)
  student, teacher = hf_models(PRESETS["main-job"], "cpu", teacher_dtype=torch.float32)
  optimizer = torch.optim.AdamW(student.parameters(), lr=3e-4)
  eager = Peer(student, teacher, optimizer, "cpu", autocast_dtype=torch.bfloat16 if dtype == "bfloat16" else None)
  compiled = Peer(torch.compile(student), torch.compile(teacher), optimizer, "cpu", eager.autocast_dtype)
  batch, length, vocab = 8, PRESETS["main-job"].student["max_target_length"], student.config.vocab_size
  tokens = torch.randint(0, vocab, (batch, length + 1), generator=torch.Generator().manual_seed(0))
  data = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
  steps = {
    "torch eager CE": eager.ce_step,
    "torch eager KD": eager.kd_step,
    "torch.compile CE": compiled.ce_step,
    "torch.compile KD": compiled.kd_step,
  }
  _serve(conn, lambda row, i: steps[row](*data), f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def _serve(conn, step, description: str) -> None:
  """Answers ("time", row, n) with n step times, ("warm", row, n) with the warm-up's seconds, None with the peak."""
  conn.send(description)
  calls = 0
  while (request := conn.recv()) is not None:
    kind, row, n = request
    times = []
    for _ in range(n):
      start = time.perf_counter()
      step(row, calls)
      times.append(time.perf_counter() - start)
      calls += 1
    conn.send(sum(times) if kind == "warm" else times)
  conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # KiB on Linux -> GiB


class Worker:
  def __init__(self, target, *args):
    context = multiprocessing.get_context("spawn")
    self.conn, child = context.Pipe()
    self.process = context.Process(target=target, args=(child, *args), daemon=True)
    self.process.start()
    self.description = self.conn.recv()

  def ask(self, kind: str, row: str, n: int):
    self.conn.send((kind, row, n))
    return self.conn.recv()

  def close(self) -> float:
    self.conn.send(None)
    peak = self.conn.recv()
    self.process.join()
    return peak


def run_rounds(rounds: int, steps: int, dtype: str, settings: str = "", tokens_per_step: int = 8 * 256) -> dict:
  """{row: [median seconds per round]}, printed round by round, then the summary and each worker's peak RSS."""
  workers = {"project": Worker(_project_worker, dtype, settings), "torch": Worker(_torch_worker, dtype)}
  owner = {**dict.fromkeys(PROJECT_ROWS, workers["project"]), **dict.fromkeys(TORCH_ROWS, workers["torch"])}
  rows = PROJECT_ROWS + TORCH_ROWS
  for worker in workers.values():
    print(f"# {worker.description}", flush=True)
  for row in rows:
    print(f"# warm-up (compile) {row}: {owner[row].ask('warm', row, 2):.1f} s", flush=True)
  medians = {row: [] for row in rows}
  print(f"| round | {' | '.join(rows)} |  (tokens/s, median of {steps} steps)\n|{'---|' * (len(rows) + 1)}")
  for r in range(rounds):
    order = rows if r % 2 == 0 else rows[::-1]  # alternate the order: no row always follows the same one
    for row in order:
      medians[row].append(statistics.median(owner[row].ask("time", row, steps)))
    cells = " | ".join(f"{tokens_per_step / medians[row][-1]:.0f}" for row in rows)
    print(f"| {r + 1} | {cells} |", flush=True)
  peaks = {name: worker.close() for name, worker in workers.items()}
  print(summary(medians, tokens_per_step, peaks))
  return {"medians": medians, "peak_gib": peaks}


def summary(medians: dict, tokens_per_step: int, peaks: dict) -> str:
  lines = ["| row | tokens/s, median of rounds (range) |", "|---|---|"]
  for row, seconds in medians.items():
    rates = [tokens_per_step / s for s in seconds]
    lines.append(f"| {row} | {statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f}) |")
  lines += ["", "| ratio, within each round | median (range) |", "|---|---|"]
  for label, slower, faster in RATIOS:
    ratios = [a / b for a, b in zip(medians[slower], medians[faster], strict=True)]
    lines.append(f"| {label} | {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
  lines.append("")
  lines += [f"peak RSS of the {name} worker (all its rows): {gib:.2f} GiB" for name, gib in peaks.items()]
  return "\n".join(lines)
