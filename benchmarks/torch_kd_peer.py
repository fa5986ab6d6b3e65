"""The step a user would otherwise run: PyTorch + Hugging Face transformers, the same two models and shapes.

  python3 benchmarks/torch_kd_peer.py --preset h200 --out results.jsonl [--compile]     (one GPU)
  .venv/bin/python benchmarks/torch_kd_peer.py --preset cpu-smoke                       (tiny, on the CPU)
  .venv/bin/python benchmarks/torch_kd_peer.py --preset main-job --rounds 5             (against the project)

`--preset main-job` is the main job's step on the CPU (a SmolLM2-135M teacher, a 20-layer MLP-1024
student of its family, 8 x 256 tokens, float32 or `--dtype bfloat16`); with `--rounds` the project's CE
and KD steps run in the same rounds as torch's eager and compiled ones (benchmarks/peer_rounds.py).

The models are `LlamaForCausalLM`s built from the configs this project exports for the same presets
(`model.hf_config.hf_config_from`), so the shapes, vocabulary and tied embeddings are the ones
benchmarks/gpu_bench.py runs. The student keeps float32 weights and AdamW state and computes under bf16
autocast (this project's `weight_dtype=float32, dtype=bfloat16`); the teacher is held in bf16 under
`torch.no_grad`; attention is SDPA. The KD loss is 0.5 CE + 0.5 forward KL(teacher || student) at T = 1,
token-averaged in float32 (`kd_loss`, the project's `kd_alpha=0.5` objective). With trl importable, a row
times TRL's GKD loss (`GKDTrainer.generalized_jsd_loss`, beta 0 = forward KL) in place of the KL.
`--compile` adds rows with both models under `torch.compile`. A row that runs out of memory is retried
with the student's gradient checkpointing on (the row says so), then reported as OOM.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the project's config code only: JAX must not take the GPU's memory
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.gpu_bench import PRESETS as GPU_PRESETS  # noqa: E402
from benchmarks.gpu_bench import Preset, append_jsonl  # noqa: E402
from MaxText import pyconfig  # noqa: E402
from MaxText.config import load as load_config  # noqa: E402
from MaxText.model.hf_config import hf_config_from  # noqa: E402

PRESETS = {
  **GPU_PRESETS,
  "main-job": Preset(  # benchmarks/kd_step.py's main-job config: the same shapes, random weights
    student={"model_name": "smollm2-135m", "num_decoder_layers": 20, "mlp_dim": 1024, "max_target_length": 256},
    teacher_model="smollm2-135m",
    teacher_overrides="num_decoder_layers=30",
    batches=(8,),
    steps=5,
    warmup=2,
    remat=("none",),
  ),
}


def kd_loss(student_logits, teacher_logits, labels, alpha: float = 0.5, temperature: float = 1.0, kl=None):
  """(1 - alpha) CE + alpha T^2 KL_T(teacher || student), each the mean over tokens, in float32."""
  vocab = student_logits.shape[-1]
  s = student_logits.reshape(-1, vocab).float()
  t = teacher_logits.reshape(-1, vocab).float()
  ce = F.cross_entropy(s, labels.reshape(-1))
  if kl is None:
    s_log_p = F.log_softmax(s / temperature, dim=-1)
    t_log_p = F.log_softmax(t / temperature, dim=-1)
    kl_value = (t_log_p.exp() * (t_log_p - s_log_p)).sum(-1).mean()
  else:
    kl_value = kl(s, t, temperature)
  return (1.0 - alpha) * ce + alpha * temperature * temperature * kl_value


def trl_kl():
  """TRL's GKD loss as a forward KL (beta 0), or None when trl does not import."""
  try:
    from trl.experimental.gkd import GKDTrainer  # trl >= 1.x keeps GKD under experimental
  except ImportError:
    try:
      from trl import GKDTrainer
    except ImportError:  # trl or one of its dependencies is missing: the row is left out
      return None
  return lambda s, t, temperature: GKDTrainer.generalized_jsd_loss(
    s, t, beta=0.0, temperature=temperature, reduction="batchmean"
  )


def hf_models(preset: Preset, device: str, teacher_dtype=torch.bfloat16):
  """(student, teacher) as transformers builds them from this project's exported configs."""
  from transformers import LlamaConfig, LlamaForCausalLM

  student_keys = {k: v for k, v in preset.student.items() if k not in ("attention", "dtype")}
  student_cfg = pyconfig.from_dict(student_keys)
  overrides = [kv for kv in preset.teacher_overrides.split(",") if kv]
  teacher_cfg = load_config(["base.yml", f"model_name={preset.teacher_model}", *overrides])
  models = []
  for cfg, dtype in ((student_cfg, torch.float32), (teacher_cfg, teacher_dtype)):
    hf = hf_config_from(cfg, "bfloat16", None, None, None)
    hf.pop("architectures"), hf.pop("model_type")
    config = LlamaConfig(**hf, attn_implementation="sdpa")
    with torch.device(device):
      models.append(LlamaForCausalLM(config).to(dtype))
  student, teacher = models
  teacher.eval().requires_grad_(False)
  return student, teacher


@dataclasses.dataclass
class Peer:
  student: torch.nn.Module
  teacher: torch.nn.Module
  optimizer: torch.optim.Optimizer
  device: str
  autocast_dtype: torch.dtype | None = torch.bfloat16  # None: float32 throughout

  def autocast(self):
    return torch.autocast(self.device, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

  def ce_step(self, tokens, labels):
    with self.autocast():
      logits = self.student(input_ids=tokens).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
    return self._update(loss)

  def kd_step(self, tokens, labels, kl=None):
    with self.autocast():
      with torch.no_grad():
        teacher_logits = self.teacher(input_ids=tokens).logits
      logits = self.student(input_ids=tokens).logits
    return self._update(kd_loss(logits, teacher_logits, labels, kl=kl))

  def teacher_forward(self, tokens, labels):
    with self.autocast(), torch.no_grad():
      return self.teacher(input_ids=tokens).logits.float().logsumexp(-1).sum()

  def _update(self, loss):
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _sync(device: str):
  if device == "cuda":
    torch.cuda.synchronize()


def time_row(fn, batch, steps: int, warmup: int, device: str) -> tuple[list[float], float]:
  """(seconds of each timed step, seconds of the warm-up, which holds any compile)."""
  start = time.perf_counter()
  for _ in range(warmup):
    fn(*batch)
  _sync(device)
  warm = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn(*batch)
    _sync(device)
    times.append(time.perf_counter() - start)
  return times, warm


def rows_for(peer: Peer, compiled: bool) -> dict:
  if compiled:
    return {"KD step: forward KL, torch.compile": "compile"}
  rows = {
    "CE step": peer.ce_step,
    "KD step: forward KL, alpha 0.5, T 1": peer.kd_step,
    "teacher forward": peer.teacher_forward,
  }
  trl = trl_kl()
  if trl is not None:
    rows["KD step: TRL GKD loss (beta 0), alpha 0.5, T 1"] = lambda x, y: peer.kd_step(x, y, kl=trl)
  return rows


def measure(peer: Peer, preset: Preset, batch: int, compiled: bool, out: str = "") -> list[dict]:
  """The eager rows at one shape, or (`compiled`) the KD step under torch.compile."""
  length = preset.student["max_target_length"]
  vocab = peer.student.config.vocab_size
  generator = torch.Generator().manual_seed(batch)
  tokens = torch.randint(0, vocab, (batch, length + 1), generator=generator).to(peer.device)
  data = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
  results = []
  eager = (peer.student, peer.teacher)
  for name, fn in rows_for(peer, compiled).items():
    if fn == "compile":  # the eager models come back after it
      peer.student, peer.teacher = torch.compile(peer.student), torch.compile(peer.teacher)
      fn = peer.kd_step
    results.append(run_row(peer, name, fn, data, preset, batch))
    print(format_row(results[-1]), flush=True)
    append_jsonl(out, results[-1])
  peer.student, peer.teacher = eager
  return results


def run_row(peer: Peer, name: str, fn, data, preset: Preset, batch: int) -> dict:
  note = ""
  for attempt in ("plain", "gradient checkpointing"):
    if peer.device == "cuda":
      torch.cuda.empty_cache()
      torch.cuda.reset_peak_memory_stats()
    try:
      times, warm = time_row(fn, data, preset.steps, preset.warmup, peer.device)
      break
    except torch.OutOfMemoryError:
      peer.optimizer.zero_grad(set_to_none=True)
      if attempt != "plain":
        return {"framework": "pytorch", "row": name, "shape": f"{batch} x {data[0].shape[1]}", "oom": True}
      peer.student.gradient_checkpointing_enable()
      note = "gradient checkpointing (OOM without)"
  seconds = statistics.median(times)
  peak = torch.cuda.max_memory_allocated() / 2**30 if peer.device == "cuda" else None
  return {
    "framework": "pytorch",
    "row": name,
    "shape": f"{batch} x {data[0].shape[1]}",
    "median_ms": 1e3 * seconds,
    "min_ms": 1e3 * min(times),
    "max_ms": 1e3 * max(times),
    "tokens_per_s": data[0].numel() / seconds,
    "process_peak_gib": peak,
    "warmup_s": warm,
    "note": note,
  }


def format_row(r: dict) -> str:
  if r.get("oom"):
    return f"| {r['framework']} | {r['row']} | {r['shape']} | OOM | | | |"
  peak = f"{r['process_peak_gib']:.1f}" if r["process_peak_gib"] else "-"
  return (
    f"| {r['framework']} | {r['row']} | {r['shape']} | {r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f}) | "
    f"{r['tokens_per_s']:,.0f} | {peak} | {r['warmup_s']:.0f} s warm-up {r['note']} |"
  )


HEADER = (
  "| framework | row | batch x length | ms/step median (range) | tokens/s | peak GiB | notes |\n"
  "|---|---|---|---|---|---|---|"
)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="h200")
  parser.add_argument("--batches", default="", help="comma list of sequences (default: the preset's)")
  parser.add_argument("--steps", type=int, default=0)
  parser.add_argument("--compile", action="store_true", help="also time the KD step under torch.compile")
  parser.add_argument("--out", default="")
  parser.add_argument("--rounds", type=int, default=0, help="main-job only: interleaved rounds with the project")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="with --rounds")
  parser.add_argument("--set", default="", help="with --rounds: key=value,... over the project's keys")
  args = parser.parse_args(argv)
  if args.rounds:
    if args.preset != "main-job":
      parser.error(f"--rounds runs the main-job preset only, not {args.preset}")
    from benchmarks.peer_rounds import run_rounds

    return run_rounds(args.rounds, args.steps or PRESETS["main-job"].steps, args.dtype, args.set)
  preset = PRESETS[args.preset]
  batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else preset.batches
  preset = dataclasses.replace(preset, steps=args.steps or preset.steps)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  student, teacher = hf_models(preset, device)
  optimizer = torch.optim.AdamW(student.parameters(), lr=3e-4, fused=device == "cuda")
  peer = Peer(student, teacher, optimizer, device)
  name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  print(f"torch {torch.__version__} on {name}; student {sum(p.numel() for p in student.parameters()):,} parameters")
  print(HEADER, flush=True)
  results = []
  for batch in batches:
    results += measure(peer, preset, batch, False, args.out)
  if args.compile:  # last: its compile can take minutes, and the eager rows of every shape come first
    results += measure(peer, preset, batches[0], True, args.out)
  return results


if __name__ == "__main__":
  main()
