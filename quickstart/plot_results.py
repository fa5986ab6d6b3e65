"""Figure and markdown table of a set of runs, from their metrics.jsonl files.

  python quickstart/plot_results.py --runs outputs/quickstart/ce_only outputs/quickstart/alpha_02 ... \\
      --teacher outputs/quickstart/quickstart_teacher --figure pics/example_training.png --table results.md

Works on any runs written by MaxText/train.py: a run without KD metrics gets "-" in the KD columns.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_run(run_dir: str) -> dict:
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  train = [r for r in records if "ce" in r and "eval/loss" not in r]
  evals = [r for r in records if "eval/loss" in r]
  return {"name": os.path.basename(os.path.normpath(run_dir)), "train": train, "eval": evals}


def summary_row(run: dict) -> dict:
  last = run["eval"][-1] if run["eval"] else {}
  speeds = [r["tokens_per_s"] for r in run["train"][1:]] or [r["tokens_per_s"] for r in run["train"]]
  return {
    "name": run["name"],
    "step": last.get("step", float("nan")),
    "ce": last.get("eval/loss", float("nan")),
    "ppl": last.get("eval/perplexity", float("nan")),
    "kl": last.get("eval/kd/kl_div_T1"),
    "top1": last.get("eval/kd/top1_agreement"),
    "tokens_per_s": sum(speeds) / max(len(speeds), 1),
  }


def markdown_table(runs: list[dict], teacher: dict | None) -> str:
  lines = [
    "| run | step | held-out CE | perplexity | KL to teacher (T=1) | top-1 agreement | tokens/s |",
    "|---|---|---|---|---|---|---|",
  ]
  fmt = lambda x, spec: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)
  rows = ([(teacher, True)] if teacher else []) + [(r, False) for r in runs]
  for run, is_teacher in rows:
    row = summary_row(run)
    kl, top1 = (0.0, 1.0) if is_teacher else (row["kl"], row["top1"])
    name = f"{row['name']} (teacher)" if is_teacher else row["name"]
    lines.append(
      f"| {name} | {fmt(row['step'], 'd')} | {fmt(row['ce'], '.4f')} | {fmt(row['ppl'], '.2f')} | "
      f"{fmt(kl, '.4f')} | {fmt(top1, '.3f')} | {fmt(row['tokens_per_s'], ',.0f')} |"
    )
  return "\n".join(lines) + "\n"


def _off_scale(run: dict, limit: float) -> bool:
  return bool(run["eval"]) and run["eval"][-1]["eval/loss"] > limit


def plot(runs: list[dict], teacher: dict | None, path: str) -> None:
  """Two panels; a run that ends far above the others is drawn in a small third panel of its own."""
  finals = sorted(r["eval"][-1]["eval/loss"] for r in runs if r["eval"])
  limit = finals[len(finals) // 2] + 1.0 if finals else float("inf")  # 1 nat above the median run
  outliers = [r for r in runs if _off_scale(r, limit)]
  fig, axes = plt.subplots(
    1,
    3 if outliers else 2,
    figsize=(16 if outliers else 12, 4.5),
    gridspec_kw={"width_ratios": [3, 3, 2] if outliers else [1, 1]},
  )
  ax_train, ax_eval = axes[0], axes[1]
  for run in ([teacher] if teacher else []) + [r for r in runs if r not in outliers]:
    style = {"color": "black", "linestyle": "--"} if run is teacher else {}
    label = f"{run['name']} (teacher)" if run is teacher else run["name"]
    ax_train.plot([r["step"] for r in run["train"]], [r["ce"] for r in run["train"]], label=label, **style)
    ax_eval.plot(
      [r["step"] for r in run["eval"]], [r["eval/loss"] for r in run["eval"]], marker="o", label=label, **style
    )
  ax_train.set(title="training cross-entropy on the labels", xlabel="step", ylabel="nats per token")
  ax_eval.set(title="held-out cross-entropy", xlabel="step", ylabel="nats per token")
  ax_eval.legend(fontsize=8)
  if outliers:
    ax_out = axes[2]
    for run in outliers:
      ax_out.plot(
        [r["step"] for r in run["eval"]],
        [r["eval/loss"] for r in run["eval"]],
        marker="o",
        color="C6",
        label=f"{run['name']} (held-out)",
      )
      ax_out.plot(
        [r["step"] for r in run["train"]],
        [r["ce"] for r in run["train"]],
        color="C6",
        alpha=0.5,
        label=f"{run['name']} (training)",
      )
    ax_out.set(title="off the scale of the others", xlabel="step", ylabel="nats per token")
    ax_out.legend(fontsize=8)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", nargs="+", required=True, help="run folders (each holding metrics.jsonl)")
  parser.add_argument("--teacher", default="", help="the teacher's run folder (drawn dashed, first table row)")
  parser.add_argument("--figure", required=True)
  parser.add_argument("--table", required=True)
  args = parser.parse_args(argv)
  runs = [read_run(r) for r in args.runs]
  teacher = read_run(args.teacher) if args.teacher else None
  plot(runs, teacher, args.figure)
  table = markdown_table(runs, teacher)
  with open(args.table, "w", encoding="utf-8") as f:
    f.write(table)
  print(table)
  return table


if __name__ == "__main__":
  main()
