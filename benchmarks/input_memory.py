"""Streaming input: peak memory and tokens/s of the training pipeline over generated corpora of growing size.

  .venv/bin/python benchmarks/input_memory.py [--sizes_mb 100,1000] [--workers 0,2] [--batches 3072]
      [--repeats 3] [--tokenizer byte|bpe] [--folder DIR]

Writes JSONL corpora (50 MB files of ~2 KB documents of random words, seeded) once into --folder, then for
each (size, worker count) runs a fresh process that opens the corpus (indexing included), reads one
shuffle buffer's worth of batches to warm up (worker start-up, the buffer's first fill) and times
--batches more at the demo config (8 x 128 tokens, packing): whole cycles of the shuffle buffer.
Reports peak RSS of the main process and of all its Grain workers together (VmHWM of each; the largest
of the repeats), the time to open the corpus, and tokens/s (non-padding target tokens; median and range
of the repeats, each a fresh process). `bpe` trains a 4,096-token byte-level BPE
tokenizer on 1 MB of the corpus first (tokenization in the workers is then real work); `byte` is the
demo config's tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

FILE_MB = 50
WORDS = (  # noqa: SIM905
  "the of and to in a is that for it as was with be by on not he this are or his from at which but "
  "have an they you were her she there would their we him been has when who will more no if out so "
  "said what up its about into than them can only other new some time could these two may then do "
  "first any my now such like our over man me even most made after also did many before must through "
  "back years where much your way well down should because each just those people how too little state "
  "good very make world still own see men work long get here between both life being under never day "
  "same another know while last might us great old year off come since against go came right used take "
  "three"
).split()


def write_corpus(folder: str, size_mb: int) -> str:
  """`size_mb` MB of JSONL in 50 MB files (a corpus folder reused when it is complete)."""
  path = os.path.join(folder, f"corpus_{size_mb}mb")
  done = os.path.join(path, "DONE")
  if os.path.exists(done):
    return path
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(size_mb)
  vocab = np.array(WORDS)
  for index in range(max(1, size_mb // FILE_MB)):
    with open(os.path.join(path, f"part-{index:04d}.jsonl"), "w", encoding="utf-8") as f:
      written = 0
      while written < min(FILE_MB, size_mb) << 20:
        words = vocab[rng.integers(0, len(vocab), size=(1000, 400))]
        lines = "".join(json.dumps({"text": " ".join(row)}) + "\n" for row in words)
        f.write(lines)
        written += len(lines)
  open(done, "w").close()
  return path


def train_bpe(folder: str, corpus: str) -> str:
  out = os.path.join(folder, "bpe")
  if not os.path.exists(os.path.join(out, "tokenizer.json")):
    sample = os.path.join(folder, "sample.txt")
    with open(os.path.join(corpus, "part-0000.jsonl"), encoding="utf-8") as f, open(sample, "w") as s:
      s.write("\n".join(json.loads(line)["text"] for line, _ in zip(f, range(500), strict=False)))
    cmd = [sys.executable, "-m", "MaxText.train_tokenizer", "--type", "bpe", "--vocab_size", "4096"]
    subprocess.run([*cmd, "--dataset_path", sample, "--output", out], check=True, capture_output=True)
  return out


def _vm_hwm_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    line = next(row for row in f if row.startswith("VmHWM:"))
  return int(line.split()[1]) / 1024


def _children(pid: int) -> list[int]:
  found = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
      except (OSError, IndexError, ValueError):
        pass
  return found


def measure(args) -> dict:
  from MaxText import pyconfig
  from MaxText.data import input_pipeline
  from MaxText.data.tokenizer import build_tokenizer

  keys = {
    "model_name": "demo",
    "dataset_type": "jsonl",
    "dataset_path": args.path,
    "grain_worker_count": int(args.workers),
  }
  keys.update(max_target_length=128, per_device_batch_size=8)
  if args.tokenizer_path:
    keys.update(tokenizer_type="huggingface", tokenizer_path=args.tokenizer_path, vocab_size=4096)
  config = pyconfig.from_dict(keys)
  started = time.perf_counter()
  corpus = input_pipeline.Corpus(config, build_tokenizer(config.tokenizer_type, config.tokenizer_path))
  open_s = time.perf_counter() - started
  batches = input_pipeline.make_iterator(config, corpus, "train", 8)
  # warm-up: worker start-up and the first fill of the shuffle buffer (its windows are then emitted), so the
  # timed batches cover whole buffer cycles: read, tokenize, shuffle, emit
  for _ in range(config.data_shuffle_buffer_size // 8):
    next(batches)
  started, tokens = time.perf_counter(), 0
  for _ in range(args.batches):
    tokens += int(np.count_nonzero(next(batches)["targets_segmentation"]))
  seconds = time.perf_counter() - started
  workers = [_vm_hwm_mb(p) for p in _children(os.getpid())]
  return {
    "documents": len(corpus.documents),
    "open_s": round(open_s, 2),
    "tokens_per_s": round(tokens / seconds),
    "rss_main_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "rss_workers_mb": round(sum(workers)),
    "worker_processes": len(workers),
  }


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes_mb", default="100,1000")
  parser.add_argument("--workers", default="0,2")
  parser.add_argument("--batches", type=int, default=3072)  # 3 cycles of the 8,192-window shuffle buffer
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--tokenizer", choices=("byte", "bpe"), default="byte")
  parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "maxtext-input-benchmark"))
  parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--path", help=argparse.SUPPRESS)
  parser.add_argument("--tokenizer_path", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.measure:
    print(json.dumps(measure(args)))
    os._exit(0)  # Grain's worker processes are torn down with the process
  from benchmarks.kd_loss import processor

  os.makedirs(args.folder, exist_ok=True)
  print(f"processor: {processor()}; tokenizer {args.tokenizer}; demo config (8 x 128 tokens per batch)")
  print(
    "| corpus | documents | workers | open (s) | tokens/s, median (range) | peak RSS main (MB) "
    "| peak RSS workers, MB (processes) |"
  )
  print("|---|---|---|---|---|---|---|")
  for size in (int(s) for s in args.sizes_mb.split(",")):
    corpus = write_corpus(args.folder, size)
    tokenizer_path = train_bpe(args.folder, corpus) if args.tokenizer == "bpe" else ""
    for workers in (int(w) for w in args.workers.split(",")):
      cmd = [sys.executable, __file__, "--measure", "--path", corpus, "--workers", str(workers)]
      cmd += ["--batches", str(args.batches), "--tokenizer_path", tokenizer_path]
      runs = [json.loads(_run(cmd)) for _ in range(args.repeats)]
      speed = sorted(r["tokens_per_s"] for r in runs)
      r = max(runs, key=lambda r: r["rss_main_mb"] + r["rss_workers_mb"])  # the largest footprint seen
      print(
        f"| {size} MB | {r['documents']:,} | {workers} | {r['open_s']} | {speed[len(speed) // 2]:,} "
        f"({speed[0]:,}-{speed[-1]:,}) | {r['rss_main_mb']:,} | {r['rss_workers_mb']:,} ({r['worker_processes']}) |",
        flush=True,
      )


def _run(cmd: list[str]) -> str:
  return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]


if __name__ == "__main__":
  main()
