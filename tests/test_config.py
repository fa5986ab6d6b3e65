"""Config loading: every shipped yml parses, precedence, and one-line errors naming the key."""

import glob
import json
import os
import subprocess
import sys

import pytest

from MaxText import pyconfig
from MaxText.pyconfig import ConfigError

CONFIGS = os.path.join(os.path.dirname(pyconfig.__file__), "configs")


@pytest.mark.parametrize("preset", sorted(os.path.basename(p)[:-4] for p in glob.glob(f"{CONFIGS}/models/*.yml")))
def test_every_model_preset_parses_and_validates(preset):
  config = pyconfig.from_dict({"model_name": preset})
  assert config.model_name == preset
  assert config.num_query_heads % config.num_kv_heads == 0


def test_every_shipped_framework_yml_parses(tmp_path):
  # (the study and recipe ymls, which name data and checkpoints, are parsed in test_quickstart.py; the
  # post-training starters, like upstream's, parse once given the files they require)
  required = {
    "distillation.yml": [f"teacher_overrides.load_parameters_path={tmp_path}"],
    "sft.yml": [f"hf_train_files={tmp_path}/chats.parquet", f"tokenizer_path={tmp_path}"],
  }
  ymls = [p for p in glob.glob(os.path.join(CONFIGS, "**", "*.yml"), recursive=True) if "/models/" not in p]
  assert len(ymls) >= 3, ymls
  for path in ymls:
    assert pyconfig.initialize([path, *required.get(os.path.basename(path), [])]) is not None


def test_public_numbers_of_llama31_8b():
  c = pyconfig.from_dict({"model_name": "llama3.1-8b"})
  assert (c.vocab_size, c.emb_dim, c.num_decoder_layers, c.num_query_heads, c.num_kv_heads, c.mlp_dim) == (
    128256,
    4096,
    32,
    32,
    8,
    14336,
  )
  assert c.rope_theta == 500000.0 and c.rope_scaling_factor == 8.0


def test_precedence_base_then_preset_then_command_line():
  assert pyconfig.from_dict({}).emb_dim == 64  # base.yml
  assert pyconfig.from_dict({"model_name": "tiny"}).emb_dim == 32  # preset over base
  assert pyconfig.initialize(["base.yml", "model_name=tiny", "emb_dim=48"]).emb_dim == 48  # command line wins


def test_config_is_frozen_and_typed():
  c = pyconfig.initialize(["base.yml", "steps=7", "learning_rate=1e-3", "rope_theta=500000"])
  assert c.steps == 7 and isinstance(c.learning_rate, float) and isinstance(c.rope_theta, float)
  with pytest.raises(AttributeError):
    c.steps = 3


def test_derived_yml_with_base_config(tmp_path):
  child = tmp_path / "child.yml"
  child.write_text("base_config: base.yml\nsteps: 11\nmodel_name: tiny\n")
  c = pyconfig.initialize([str(child), "seed=3"])
  assert (c.steps, c.emb_dim, c.seed) == (11, 32, 3)


@pytest.mark.parametrize(
  "args, message",
  [
    (["stpes=3"], "unknown config key 'stpes' in the command line; did you mean 'steps'?"),
    (["steps=abc"], "steps: expected an integer, got 'abc'"),
    (["learning_rate=-1"], "learning_rate: expected a positive number, got -1.0"),
    (["scan_layers=maybe"], "scan_layers: expected true or false, got 'maybe'"),
    (["dtype=float8"], "dtype: expected one of bfloat16, float32, float16, got 'float8'"),
    (["num_query_heads=6", "num_kv_heads=4"], "num_query_heads: 6 must be a multiple of num_kv_heads=4"),
    (["model_name=llama9"], "model_name: no preset 'llama9'"),
    (["load_parameters_path=/no/such/ckpt"], "load_parameters_path: '/no/such/ckpt' does not exist"),
    (["adam_b1=1.0"], "adam_b1: expected a value in [0, 1)"),
    (["steps"], "command-line argument 'steps': expected key=value"),
    # upstream's names are reported as written, the canonical key beside them
    (
      ["student_overrides.base_num_decoder_layers=abc"],
      "student_overrides.base_num_decoder_layers (num_decoder_layers here): expected an integer, got 'abc'",
    ),
    (["base_emb_dim=0"], "base_emb_dim (emb_dim here): expected a positive integer, got 0"),
    # an allowed empty value is shown as such, not as an empty entry at the head of the list
    (["eval_dataset_type=csv"], "eval_dataset_type: expected one of '' (unset), text, jsonl, parquet,"),
  ],
)
def test_bad_input_gives_one_line_error_naming_the_key(args, message):
  with pytest.raises(ConfigError) as info:
    pyconfig.initialize(["base.yml", *args])
  assert message in str(info.value)
  assert "\n" not in str(info.value)


def test_unknown_key_in_a_yml_names_the_file(tmp_path):
  bad = tmp_path / "bad.yml"
  bad.write_text("base_config: base.yml\nlearnig_rate: 0.1\n")
  pattern = r"unknown config key 'learnig_rate' in .*bad.yml; did you mean 'learning_rate'"
  with pytest.raises(ConfigError, match=pattern):
    pyconfig.initialize([str(bad)])


def test_help_lists_every_key_with_default_and_comment():
  repo = os.path.dirname(os.path.dirname(pyconfig.__file__))
  out = subprocess.run(
    [sys.executable, os.path.join(repo, "MaxText", "train.py"), "--help"], capture_output=True, text=True, check=True
  ).stdout
  for key in pyconfig.defaults():
    assert key in out
  assert "per_device_batch_size" in out and "sequences per device per step" in out


def test_every_base_key_has_a_comment():
  assert set(pyconfig.key_comments()) == set(pyconfig.defaults())


def test_bad_config_exits_before_compiling_with_one_line(tmp_path):
  from tests.conftest import run_train

  proc = run_train(tmp_path, "steps=abc", check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip() == "config error: steps: expected an integer, got 'abc'"


STACK = ("jax", "flax", "orbax", "grain", "optax", "numpy", "fsspec")
# Each entry point's main over a bad key and a missing file, in one fresh interpreter: after each, what of
# the training stack had been imported (the config and the pre-flight checks need none of it).
_ENTRY_POINTS_PROBE = """
import json, sys
from MaxText import (decode, generate_distillation_data, pretokenize, prune_student, save_top_k_teacher_logits,
                     sft_trainer, train, train_compile, train_distill)
stack = %r
jobs = (train, sft_trainer, train_distill, decode, save_top_k_teacher_logits, generate_distillation_data,
        prune_student, pretokenize, train_compile)
results = []
for job in jobs:
  for bad in ("no_such_key=1", "tokenizer_path=/no/such/tokenizer"):
    code = job.main([job.__name__, "base.yml", bad])
    results.append([job.__name__, bad, code, [m for m in stack if m in sys.modules]])
from MaxText import convert_hf_checkpoint  # flags, not keys: a flag error
try:
  convert_hf_checkpoint.main(["--to_hf", "--output", "/tmp/x"])
except SystemExit as e:
  results.append(["convert_hf_checkpoint", "--to_hf", e.code, [m for m in stack[:4] if m in sys.modules]])
print(json.dumps(results))
"""


def test_a_config_error_ends_the_run_before_the_training_stack_is_imported():
  """Every entry point, in one fresh interpreter: after each bad key or missing file, nothing of the training
  stack has been imported (the config and the pre-flight checks need none of it; the converter, which
  reads and writes arrays, may have NumPy)."""
  repo = os.path.dirname(os.path.dirname(pyconfig.__file__))
  probe = _ENTRY_POINTS_PROBE % (STACK,)
  proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=repo, check=True)
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(results) == 19
  for name, bad, code, imported in results:
    assert code in (1, 2), (name, bad, code)
    assert imported == [], f"{name} {bad}: {imported} imported before the error"
  lines = proc.stderr.strip().splitlines()  # one line per run, naming what is wrong
  assert len(lines) == 19 and all(line.startswith(("config error: ", "error: ")) for line in lines), lines
  assert sum("no_such_key" in line for line in lines) == 9


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
  from MaxText import train
  from MaxText.config.errors import MissingFileError
  from MaxText.training import trainer  # launch imports its Trainer once the config is good

  def failing(error):
    class Trainer:
      def __init__(self, *args):
        raise error

    return Trainer

  argv = ["train.py", "base.yml", "dataset_type=synthetic"]
  monkeypatch.setattr(trainer, "Trainer", failing(MissingFileError("dataset_path: no readable files match 'x'")))
  assert train.main(argv) == 1
  assert capsys.readouterr().err == "error: dataset_path: no readable files match 'x'\n"
  monkeypatch.setattr(trainer, "Trainer", failing(KeyError("a bug")))  # not a UserError: it propagates
  with pytest.raises(KeyError, match="a bug"):
    train.main(argv)
