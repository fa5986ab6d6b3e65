"""Console lines, tensorboardX events and a JSONL file; token-weighted averages over logging windows.

KD diagnostics are computed on logged steps only (kd_loss.py): they are averaged over their own token count.
"""

from __future__ import annotations

import json
import math
import sys
import time

import jax

from MaxText.config import storage
from MaxText.config.errors import UserError
from MaxText.distill.kd_loss import DIAGNOSED_TOKENS, is_diagnostic


def flops_per_token(config) -> float:
  """Training FLOPs per token (forward + backward = 3x forward; causal attention counted at half)."""
  d, k, f = config.emb_dim, config.head_dim, config.mlp_dim
  hq, hkv = config.num_query_heads, config.num_kv_heads
  per_layer = d * hq * k * 2 + d * hkv * k * 2 + 3 * d * f
  matmul_params = config.num_decoder_layers * per_layer + d * config.vocab_size
  attention = config.num_decoder_layers * 2 * hq * k * config.max_target_length  # QK^T and PV, causal half
  return 3.0 * (2.0 * matmul_params + attention)


# Upstream MaxText's distillation metric names (its distillation guide), logged beside the kd/ ones so
# an upstream user's dashboards keep working: distill/<name> = kd/<name>, except where the names differ.
_DISTILL_NAMES = {
  "soft_loss": "soft_loss",
  "hard_loss": "hard_loss",
  "teacher_loss": "teacher_loss",
  "student_perplexity": "student_perplexity",
  "teacher_perplexity": "teacher_perplexity",
  "kl_div_at_T": "kl_div_at_T",
  "kl_div_T1": "kl_div_T1",
  "out_proj_feature_loss": "feature_loss",  # beta-scaled, as upstream's
  "total_loss": "total_loss",
  "alpha": "alpha",
  "beta_feature": "beta",
  "temperature": "temperature",
}


def _add_kd_views(record: dict) -> None:
  """The kd/ names of terms every KD run has: student CE on labels, total loss, perplexities.

  Offline runs have no teacher loss (the cache holds only the teacher's top-k), hence no teacher perplexity.
  """
  if "kd/soft_loss" not in record:
    return
  _add_cross_tokenizer_views(record)
  record["kd/hard_loss"] = record["ce"]
  record["kd/total_loss"] = record["total_loss"] if "total_loss" in record else record["loss"]
  record["kd/student_perplexity"] = math.exp(min(record["ce"], 50.0))
  if "kd/teacher_loss" in record:
    record["kd/teacher_perplexity"] = math.exp(min(record["kd/teacher_loss"], 50.0))


def _add_cross_tokenizer_views(record: dict) -> None:
  """Tokenizer-independent figures of a teacher with its own tokenizer (distill/cross_tokenizer.py): bits
  per byte of the aligned text, student and teacher, and the shares of student tokens that are heads and
  exact heads. Each is a ratio of two sums taken over the same tokens, so their common divisor cancels."""
  if record.get("kd/aligned_bytes", 0.0) <= 0.0:
    return
  per_byte = record["kd/aligned_bytes"] * math.log(2.0)
  record["kd/student_bits_per_byte"] = record["kd/student_aligned_nats"] / per_byte
  record["kd/teacher_bits_per_byte"] = record["kd/teacher_aligned_nats"] / per_byte
  record["kd/aligned_head_share"] = record["kd/aligned_heads"] / record["kd/student_tokens"]
  record["kd/exact_share"] = record["kd/exact_heads"] / record["kd/student_tokens"]


def _add_distill_names(record: dict) -> None:
  """The kd/ values (once all are in the record) also under upstream MaxText's distill/ names."""
  for upstream, ours in _DISTILL_NAMES.items():
    if f"kd/{ours}" in record:
      record[f"distill/{upstream}"] = record[f"kd/{ours}"]


def _kd_console(record: dict) -> str:
  if "kd/soft_loss" not in record:
    return ""
  return (
    f" | kd: hard {record['kd/hard_loss']:.4f} soft {record['kd/soft_loss']:.4f} "
    f"KL@T1 {record['kd/kl_div_T1']:.4f} top1 {record['kd/top1_agreement']:.3f} "
    f"alpha {record['kd/alpha']:.2f} T {record['kd/temperature']:.2f}"
    + (f" feature {record['kd/feature_loss']:.4f} beta {record['kd/beta']:.3g}" if "kd/beta" in record else "")
  )


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss or the gradient went NaN/Inf, or the gradient vanished: the run stops, keeping its checkpoints."""


_KEPT = "stopping (every checkpoint on disk was saved after a finite step)."


def check_trainable(step: int, host: dict) -> None:
  """Stops on a non-finite loss, a non-finite gradient norm, or a gradient norm of exactly 0, naming which."""
  objective = host.get("total_loss_sum", host["ce_sum"] + host.get("z_loss_sum", 0.0))  # KD adds its total
  loss = objective / max(host["tokens"], 1)
  if not math.isfinite(objective):
    raise NonFiniteLossError(f"step {step}: the loss is {loss:.6g} (not finite); {_KEPT}")
  grad_norm = host.get("grad_norm")  # absent in eval
  if grad_norm is None:
    return
  if not math.isfinite(grad_norm):
    raise NonFiniteLossError(
      f"step {step}: the gradient norm is {grad_norm} (not finite) while the loss is {loss:.6g} (parameters blew up: "
      f"learning_rate too high?); {_KEPT}"
    )
  if grad_norm == 0.0 and host["tokens"] > 0:
    raise NonFiniteLossError(
      f"step {step}: the gradient norm is exactly 0 at loss {loss:.6g}, so nothing trains (activations "
      f"overflowing, e.g. init_std too large, or saturated); {_KEPT}"
    )


def keep_records_up_to(path: str, step: int) -> list[str]:
  """Drops the records after `step` (written before a crash, after the checkpoint a run resumes from),
  so that the resumed run's records supersede them and each step appears once; returns the kept lines."""
  if not storage.isfile(path):
    return []
  lines = storage.read_text(path).splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (json.JSONDecodeError, KeyError, TypeError):
      pass  # a line cut short by the crash
  if len(kept) != len(lines):
    storage.write_text_atomic(path, "".join(kept))
  return kept


def token_means(sums: dict) -> dict[str, float]:
  """Each `<name>_sum` over the tokens it was summed on: all of them, or the diagnosed ones (kd_loss.py)."""
  tokens = max(sums.get("tokens", 0.0), 1.0)
  diagnosed = max(sums.get(DIAGNOSED_TOKENS, 0.0), 1.0)
  return {
    key[:-4]: value / (diagnosed if is_diagnostic(key[:-4]) else tokens)
    for key, value in sums.items()
    if key.endswith("_sum")
  }


def eval_record(sums: dict) -> dict[str, float]:
  """Per-token means of an eval pass's summed metrics, with the loss and its perplexity."""
  record = token_means(sums)
  record["loss"] = record["ce"]
  record["perplexity"] = math.exp(min(record["ce"], 50.0))
  _add_kd_views(record)
  _add_distill_names(record)
  return record


def fidelity_text(record: dict) -> str:
  """The student's agreement with its teacher on an eval pass, for the console ("" without a teacher)."""
  if "kd/kl_div_T1" not in record:
    return ""
  text = (
    f" | fidelity: KL(teacher||student) {record['kd/kl_div_T1']:.4f} top-1 agreement "
    f"{record['kd/top1_agreement']:.4f} teacher p(student top-1) {record['kd/teacher_prob_of_student_top1']:.4f} "
    f"expected draft acceptance (T = 1) {record['kd/expected_acceptance_T1']:.4f}"
  )
  if "kd/student_bits_per_byte" in record:  # a teacher with its own tokenizer
    text += (
      f" | bits per byte of the aligned text: student {record['kd/student_bits_per_byte']:.4f} teacher "
      f"{record['kd/teacher_bits_per_byte']:.4f} | aligned heads {record['kd/aligned_head_share']:.4f} "
      f"exact heads {record['kd/exact_share']:.4f} of the student's tokens"
    )
  return text


class JsonlRecords:
  """metrics.jsonl, one record per line: appended to a local file; an object in a bucket cannot be
  appended to, so there the whole (small) file is uploaded again after each record."""

  def __init__(self, path: str, start_step: int):
    self.path = path
    self.lines = keep_records_up_to(path, start_step)
    self.local = None if storage.is_remote(path) else open(path, "a", encoding="utf-8")  # noqa: SIM115

  def write(self, record: dict) -> None:
    line = json.dumps(record) + "\n"
    if self.local is not None:
      self.local.write(line)
      self.local.flush()
      return
    self.lines.append(line)
    storage.write_text_atomic(self.path, "".join(self.lines))

  def close(self) -> None:
    if self.local is not None:
      self.local.close()


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch at import time only
  to accept torch tensors as values (this project logs floats), and where torch is installed that costs
  about 4 s of every job's start on 2 cores, more than JAX's own import. Its image helpers still import
  torch themselves if they are ever called."""
  if "tensorboardX.writer" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter

    return SummaryWriter
  sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricLogger:
  """Collects per-step sums on the host and writes one record every `log_period` steps."""

  def __init__(self, config, run_dir: str, is_primary: bool, start_step: int):
    self.config = config
    self.is_primary = is_primary
    self.window: dict[str, float] = {}
    self.last: dict[str, float] = {}
    self.window_start = time.perf_counter()
    self.window_steps = 0
    self.run_start_step = start_step
    self.run_start_time = time.perf_counter()
    self.flops_per_token = flops_per_token(config)
    self.writer = None
    self.jsonl = None
    if is_primary:
      SummaryWriter = _summary_writer_class()
      storage.makedirs(run_dir)
      self.writer = SummaryWriter(storage.join(run_dir, "tensorboard"))  # tensorboardX writes gs:// itself
      self.jsonl = JsonlRecords(storage.join(run_dir, "metrics.jsonl"), start_step)

  def add_step(self, step: int, device_metrics: dict) -> float:
    """Adds one step's metrics (fetched from device here) and returns its loss; raises on a NaN/Inf loss."""
    host = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    check_trainable(step, host)
    for key, value in host.items():
      if key.endswith("_sum") or key in ("tokens", DIAGNOSED_TOKENS):
        self.window[key] = self.window.get(key, 0.0) + value
      else:
        self.last[key] = value
    self.window_steps += 1
    return host.get("total_loss_sum", host["ce_sum"] + host.get("z_loss_sum", 0.0)) / max(host["tokens"], 1)

  def summarize(self) -> dict[str, float]:
    record = token_means(self.window)
    record.setdefault("total_loss", record["ce"] + record.get("z_loss", 0.0))
    record["loss"] = record["total_loss"]
    record["perplexity"] = math.exp(min(record["ce"], 50.0))
    _add_kd_views(record)
    record.update(self.last)
    _add_distill_names(record)
    return record

  def write(self, step: int) -> dict[str, float]:
    """Writes the window ending at `step` and starts a new one."""
    elapsed = time.perf_counter() - self.window_start
    record = self.summarize()
    tokens_per_s = self.window.get("tokens", 0.0) / max(elapsed, 1e-9)  # sums are global (all hosts)
    record["tokens_per_s"] = tokens_per_s
    record["tflops_per_device"] = tokens_per_s * self.flops_per_token / jax.device_count() / 1e12
    record["step_time_s"] = elapsed / max(self.window_steps, 1)
    self._emit(step, record, prefix="")
    remaining = self.config.steps - step
    eta = remaining * record["step_time_s"]
    if self.is_primary:
      print(
        f"step {step:>6} | loss {record['loss']:.4f} | lr {record.get('learning_rate', 0):.3e} | "
        f"grad_norm {record.get('grad_norm', 0):.3f} | {tokens_per_s:,.0f} tok/s | "
        f"{record['tflops_per_device']:.4f} TFLOP/s/device | ETA {eta:,.0f}s" + _kd_console(record),
        flush=True,
      )
    self.window, self.last, self.window_steps = {}, {}, 0
    self.window_start = time.perf_counter()
    return record

  def write_eval(self, step: int, sums: dict, scored: str = "", source: str = "") -> dict[str, float]:
    """An eval pass's record (eval/...), or one mixture source's (eval/<source>/..., returned as <source>/...)."""
    record = eval_record(sums)
    prefix = f"eval/{source}/" if source else "eval/"
    self._emit(step, record, prefix=prefix)
    if self.is_primary:
      print(
        f"eval{' ' + source if source else ''} at step {step}: loss {record['loss']:.4f} | perplexity "
        f"{record['perplexity']:.2f}{fidelity_text(record)} ({int(sums['tokens'])} tokens{scored})",
        flush=True,
      )
    return {f"{source}/{k}": v for k, v in record.items()} if source else record

  def write_tasks(self, step: int, scores: dict[str, float]) -> dict[str, float]:
    """lm-eval task metrics of an eval step (eval_tasks), logged as eval/tasks/<task>/<metric>."""
    self._emit(step, scores, prefix="eval/")
    if self.is_primary:
      shown = " | ".join(f"{name[len('tasks/') :]} {value:.4f}" for name, value in scores.items())
      print(f"eval tasks at step {step}: {shown}", flush=True)
    return scores

  def _emit(self, step: int, record: dict, prefix: str) -> None:
    if not self.is_primary:
      return
    for key, value in record.items():
      self.writer.add_scalar(prefix + key, value, step)
    self.jsonl.write({"step": step, **{prefix + k: v for k, v in record.items()}})
    self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.jsonl.close()
