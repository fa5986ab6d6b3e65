"""The main job's report: the results tables (closeness to the teacher; task accuracy, retention and graded
chat), every chat answer marked, and the figure of the held-out curves."""

from __future__ import annotations


def results_table(results: dict) -> str:
  """Two tables: how close each model is to the teacher on held-out data, and what it can still do."""
  rows = [
    "| model | non-embedding parameters | held-out conversations: assistant-token loss | gap closed (CE's last / "
    "best step) | KL(teacher \\|\\| model), T = 1 | top-1 agreement | held-out text loss: Shakespeare | Python docs | "
    "train tokens/s | wall time |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  dash = lambda x, spec: "-" if x is None else format(x, spec)
  for name, r in results["models"].items():
    conv = r["conversations"]
    fidelity = "- | -" if name == "teacher" else f"{conv['kl']:.4f} | {conv['top1']:.3f}"
    loss = f"{conv['loss']:.4f}"
    if "best_step" in r:
      loss += f" (best: {r['best_step']['loss']:.4f} at step {r['best_step']['step']})"
    closed = "-"
    if "gap_closed" in r:
      closed = f"{r['gap_closed']:.0%} / {r['gap_closed_best']:.0%}"
    rows.append(
      f"| {name} | {r['non_embedding']:,} | {loss} | {closed} | {fidelity} | {r['shakespeare']:.4f} | "
      f"{r['python_docs']:.4f} | {dash(r.get('tokens_per_s'), ',.0f')} | {dash(r.get('wall_s'), '.0f')} |"
    )
  tables = [abilities_table(results["models"])]
  if any("chat_penalty" in r for r in results["models"].values()):
    tables.append(penalty_table(results["models"], results["repetition_penalty"]))
  return "\n".join(rows) + "\n\n" + "\n".join(tables)


def abilities_table(models: dict) -> str:
  """Task accuracy (lm-eval), retention, and the graded chat answers of the teacher and each student."""
  graded = {name: r for name, r in models.items() if "tasks" in r}
  task_names = list(graded["teacher"]["tasks"])
  rows = [
    "| model | " + " | ".join(task_names) + " | retention (mean accuracy / teacher's) | chat: right answers | "
    "teacher's right answers kept | degenerate answers |",
    "|---" * (len(task_names) + 5) + "|",
  ]
  for name, r in graded.items():
    chat = r.get("chat", {})
    right = f"{chat['correct']}/{len(chat['grades'])}" if chat else "-"
    kept = format(chat["kept"], ".0%") if chat else "-"
    rows.append(
      f"| {name} | " + " | ".join(f"{r['tasks'][t]:.3f}" for t in task_names) + f" | {r['retention']:.0%} | "
      f"{right} | {kept} | {chat.get('degenerate', '-')} |"
    )
  return "\n".join(rows) + "\n"


def penalty_table(models: dict, penalty: float) -> str:
  """The graded chat again with a decode-time repetition penalty: what a user's decode setting recovers."""
  rows = [
    f"| model | chat with repetition_penalty={penalty}: right answers | teacher's right answers kept | "
    "degenerate answers |",
    "|---|---|---|---|",
  ]
  for name, r in models.items():
    if "chat_penalty" in r:
      chat = r["chat_penalty"]
      rows.append(f"| {name} | {chat['correct']}/{len(chat['grades'])} | {chat['kept']:.0%} | {chat['degenerate']} |")
  return "\n".join(rows) + "\n"


def chat_table(chats: dict, models: dict, key: str = "chat") -> str:
  """Every answer, marked right, wrong or a loop (main_job_eval.grade); `key`: the models' grades of them."""
  names = [n for n in chats if n != "prompts"]
  rows = ["| prompt | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  cell = lambda text: text.replace("|", "\\|").replace("\n", " ")
  mark = lambda g: "**loop**" if g["degenerate"] else ("**right**" if g["correct"] else "**wrong**")
  for i, prompt in enumerate(chats["prompts"]):
    answers = (f"{mark(models[n][key]['grades'][i])} {cell(chats[n][i])}" for n in names)
    rows.append(f"| {cell(prompt)} | " + " | ".join(answers) + " |")
  return "\n".join(rows) + "\n"


def figure(path: str, results: dict) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  models = results["models"]
  for ax, key, label in zip(axes, ("loss", "top1"), ("assistant-token loss", "top-1 agreement"),
                            strict=True):  # fmt: skip
    for name, curve in results["curves"].items():
      start = models[f"pruned {results['runs'][name]['amount']}, before training"]["conversations"][key]
      points = [(0, start)] + [(c["step"], c[key]) for c in curve]
      style = "-" if name.endswith("_kd") else "--"
      ax.plot(*zip(*points, strict=True), style, marker="o", label=name)
    if key == "loss":
      ax.axhline(models["teacher"]["conversations"]["loss"], color="k", linestyle=":", label="teacher")
    ax.set(xlabel="step", title=f"held-out conversations: {label}")
  axes[0].legend()
  fig.suptitle("SmolLM2-135M-Instruct -> pruned students: CE on its conversations vs + word-level KD")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
