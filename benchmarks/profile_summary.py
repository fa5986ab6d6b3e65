"""Where a profiled step's device time goes: the kernels of a `jax.profiler` trace summed by name.

  python3 benchmarks/profile_summary.py TRACE_DIR [--device /device:GPU] [--top 30]

Reads the `perfetto_trace.json.gz` that `jax.profiler.trace(..., create_perfetto_trace=True)` writes
(gpu_bench.py --profile_dir does), adds up the complete events ("ph": "X") of every process whose name
starts with `--device`, and prints each kernel's total time, share and count, largest first: the table
to read before changing code for speed.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os


def find_trace(directory: str) -> str:
  found = sorted(glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True))
  if not found:
    raise SystemExit(f"{directory}: no perfetto_trace.json.gz under it (profile with create_perfetto_trace=True)")
  return found[-1]


def kernel_times(events: list[dict], device_prefix: str) -> tuple[dict[str, tuple[float, int]], float]:
  """({kernel name: (microseconds, calls)}, the total) over the processes named `device_prefix*`."""
  names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  devices = {pid for pid, name in names.items() if name.startswith(device_prefix)}
  total, calls = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("pid") in devices:
      total[e["name"]] += float(e.get("dur", 0.0))
      calls[e["name"]] += 1
  return {name: (us, calls[name]) for name, us in total.most_common()}, float(sum(total.values()))


def summary(trace_path: str, device_prefix: str = "/device:GPU", top: int = 30) -> str:
  with gzip.open(trace_path, "rt") as f:
    events = json.load(f)["traceEvents"]
  times, total = kernel_times(events, device_prefix)
  lines = [f"{trace_path}: {total / 1e3:.1f} ms of {device_prefix}* kernel time, {len(times)} kernels"]
  lines += ["| kernel | ms | share | calls |", "|---|---|---|---|"]
  for name, (us, count) in list(times.items())[:top]:
    lines.append(f"| {name[:90]} | {us / 1e3:.2f} | {100 * us / max(total, 1e-9):.1f}% | {count} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("trace_dir")
  parser.add_argument("--device", default="/device:GPU")
  parser.add_argument("--top", type=int, default=30)
  args = parser.parse_args()
  print(summary(find_trace(args.trace_dir), args.device, args.top))


if __name__ == "__main__":
  main()
