"""The package layout: imports flow one way, no module imports an entry point, modules stay small."""

import ast
import os
import subprocess
import sys

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "MaxText")
# config -> parallel -> data -> model -> losses | inference -> distill -> lm_harness -> training -> jobs: a
# package may import its own modules and those of lower rank (losses and inference share one and ignore each
# other), never a higher one.
RANKS = {
  "config": 0,
  "parallel": 1,
  "data": 2,
  "model": 3,
  "losses": 4,
  "inference": 4,
  "distill": 5,
  "lm_harness": 6,
  "training": 7,
}
ENTRY_POINTS = {
  "sft_trainer",
  "train_distill",
  "trainers",
  "train",
  "save_top_k_teacher_logits",
  "convert_hf_checkpoint",
  "train_tokenizer",
  "decode",
  "generate_distillation_data",
  "pretokenize",
}
FACADES = {"pyconfig", "max_utils"}  # the spec's names, for users: nothing inside the packages uses them


def _modules() -> list[str]:
  names = []
  for root, _, files in os.walk(PACKAGE):
    for file in sorted(files):
      if file.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, file), REPO)[:-3].replace(os.sep, ".")
        names.append(rel.removesuffix(".__init__"))
  return sorted(names)


def _path(module: str) -> str:
  base = os.path.join(REPO, *module.split("."))
  return os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"


def _source(module: str) -> str:
  with open(_path(module), encoding="utf-8") as f:
    return f.read()


def _imported(module: str) -> set[str]:
  """MaxText modules (or packages) a module imports anywhere in its body, as dotted names."""
  found = set()
  for node in ast.walk(ast.parse(_source(module))):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("MaxText")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("MaxText"):
      found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
  return {name for name in found if name in set(_modules())}


def _top(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
  # One interpreter, but every MaxText module is dropped from sys.modules before the next is imported
  # first: an import cycle fails whichever module of it comes first, so each order is tried.
  script = (
    "import importlib, sys\n"
    f"for name in {_modules()!r}:\n"
    "  for loaded in [m for m in sys.modules if m == 'MaxText' or m.startswith('MaxText.')]:\n"
    "    del sys.modules[loaded]\n"
    "  importlib.import_module(name)\n"
    "print('imported', len(" + repr(_modules()) + "))\n"
  )
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == f"imported {len(_modules())}"


def test_imports_flow_one_way_and_never_into_an_entry_point():
  violations = []
  for module in _modules():
    own = _top(module)
    for target in _imported(module):
      top = _top(target)
      if top in ENTRY_POINTS:
        violations.append(f"{module} imports the entry point {target}")
      elif own in RANKS and (top in FACADES or top not in RANKS or RANKS[top] > RANKS[own]):
        violations.append(f"{module} ({own}) imports {target}, against config -> ... -> training")
  assert not violations, "\n".join(violations)


def test_the_entry_point_is_thin_and_no_module_is_large():
  sizes = {module: len(_source(module).splitlines()) for module in _modules()}
  assert sizes["MaxText.train"] <= 150, sizes["MaxText.train"]
  large = {module: n for module, n in sizes.items() if n > 400}
  assert not large, large
  assert set(RANKS) <= {_top(m) for m in sizes}, "a package of the layout is missing"
