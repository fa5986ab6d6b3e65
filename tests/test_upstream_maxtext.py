"""Upstream MaxText's config surface and commands, as its distillation guide and SFT tutorial write them:
the same runs as the equivalent kd_* commands (losses bit for bit), the same Config, and its refusals."""

import dataclasses
import json
import os
import sys

import forked_jobs
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from MaxText import config as config_lib
from MaxText import pyconfig
from MaxText.training import launch
from tests.chat_files import chat_tokenizer_folder
from tests.conftest import REPO, TINY, read_metrics, run_train, train_losses, xla_flags

# The guide's "Starter configurations", written as it writes them (model names, depths and paths changed).
RECOVERY = """
# logits
distill_alpha: 0.9
distill_alpha_end: 0.5
distill_alpha_schedule: cosine
distill_temperature: 2.0
distill_temperature_end: 1.0
distill_temperature_schedule: cosine

# features
distill_beta: 1.0
distill_beta_end: 0.1
distill_beta_schedule: cosine
distill_feature_loss_type: cosine
distill_layer_indices: [0, 1]   # for 2-layer student

scan_layers: True
enable_nnx: True
"""
LOGIT_ONLY = """
distill_alpha: 0.9
distill_alpha_end: 0.5
distill_alpha_schedule: cosine
distill_temperature: 2.0
distill_beta: 0.0            # disables sow; no extra memory or compute
"""
# The same runs in this project's own keys (distillation.yml's learning rate included).
RECOVERY_KD = (
  "kd_alpha=0.9 kd_alpha_end=0.5 kd_alpha_schedule=cosine kd_temperature=2.0 kd_temperature_end=1.0 "
  "kd_temperature_schedule=cosine kd_beta=1.0 kd_beta_end=0.1 kd_beta_schedule=cosine kd_feature_loss_type=cosine "
  "kd_layer_indices=0,1 kd_teacher_layer_indices=0,1 kd_feature_projection=false"
)
LOGIT_ONLY_KD = "kd_alpha=0.9 kd_alpha_end=0.5 kd_alpha_schedule=cosine kd_temperature=2.0 num_decoder_layers=1"
STUDENT_BLOCKS = {RECOVERY: "", LOGIT_ONLY: "  base_num_decoder_layers: 1  # Pattern B: a depth-pruned student\n"}
RUN = [*TINY, "steps=3"]


@pytest.fixture(scope="module")
def teacher_step(tmp_path_factory):
  out = tmp_path_factory.mktemp("teacher")
  run_train(out, *TINY, "run_name=teacher", "steps=4", "learning_rate=1e-2", "checkpoint_period=4")
  return out / "teacher" / "checkpoints" / "4"


def _guide_yml(folder, starter: str, teacher_step) -> str:
  path = folder / "distill.yml"
  path.write_text(
    'base_config: "post_train/distillation.yml"\n'
    f'student_overrides:\n  model_name: "tiny"\n{STUDENT_BLOCKS[starter]}'
    f'teacher_overrides:\n  model_name: "tiny"\n  load_parameters_path: "{teacher_step}/items"\n' + starter
  )
  return str(path)


def _run_module(module: str, *args, check=True):
  env = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
  proc = forked_jobs.run([sys.executable, "-m", module, *args], env=env, cwd=REPO, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


def _without_run_place(config):
  return dataclasses.replace(config, run_name="", base_output_directory="")


@pytest.mark.parametrize("starter, kd_keys", [(RECOVERY, RECOVERY_KD), (LOGIT_ONLY, LOGIT_ONLY_KD)])
def test_the_guides_starter_configurations_train_as_the_kd_commands_bit_for_bit(
  tmp_path, teacher_step, starter, kd_keys
):
  yml = _guide_yml(tmp_path, starter, teacher_step)
  _run_module("MaxText.train_distill", yml, f"base_output_directory={tmp_path}", "run_name=upstream", *RUN)
  kd = [
    "use_kd=true",
    f"kd_teacher_parameters_path={teacher_step}",
    "kd_teacher_model_name=tiny",
    "learning_rate=2e-4",
    *kd_keys.split(),
  ]
  run_train(tmp_path, *RUN, "run_name=kd", *kd)
  upstream_losses, kd_losses = train_losses(tmp_path / "upstream"), train_losses(tmp_path / "kd")
  assert len(upstream_losses) == 3 and upstream_losses == kd_losses
  record = read_metrics(tmp_path / "upstream")[-1]
  for upstream_name, ours in [("soft_loss", "soft_loss"), ("kl_div_T1", "kl_div_T1"), ("alpha", "alpha")]:
    assert record[f"distill/{upstream_name}"] == record[f"kd/{ours}"]
  assert ("distill/out_proj_feature_loss" in record) == (starter == RECOVERY)  # beta 0: no feature term
  saved = json.loads((tmp_path / "upstream" / "config.json").read_text())
  assert saved["kd_alpha"] == 0.9 and not any(k.startswith("distill_") for k in saved)  # canonical names only


CONVERSATIONS = [
  [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
  [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there."}],
  [{"role": "user", "content": "What is the sea?"}, {"role": "assistant", "content": "Water."}],
]


@pytest.fixture(scope="module")
def sft_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("sft")
  pq.write_table(pa.table({"messages": [CONVERSATIONS[i % 3] for i in range(30)]}), folder / "chats.parquet")
  return chat_tokenizer_folder(folder / "tok"), folder / "chats.parquet"


def _tutorial_sft_args(out, tokenizer, data, teacher_step) -> list[str]:
  """The SFT tutorial's command, key for key (hub names -> local files; sizes -> tiny)."""
  return [
    "run_name=sft",
    f"base_output_directory={out}",
    f"tokenizer_path={tokenizer}",
    "tokenizer_type=huggingface",
    "dataset_type=hf",
    "hf_path=parquet",
    f"hf_train_files={data}",
    "train_split=train",
    "train_data_columns=['messages']",
    f"load_parameters_path={teacher_step}/items",
    "model_name=tiny",
    "per_device_batch_size=2",
    "steps=3",
    "ici_expert_parallelism=-1",
    "ici_fsdp_parallelism=1",
    "max_target_length=64",
    "hf_access_token=hf_unused",
    "profiler=xplane",
  ]


def _canonical_sft_args(out, tokenizer, data, teacher_step) -> list[str]:
  return [
    f"base_output_directory={out}",
    "model_name=tiny",
    "use_sft=true",
    "sft_train_on_completion_only=true",
    "learning_rate=2e-5",
    "dataset_type=parquet",
    f"dataset_path={data}",
    "tokenizer_type=huggingface",
    f"tokenizer_path={tokenizer}",
    f"load_parameters_path={teacher_step}",
    "per_device_batch_size=2",
    "steps=3",
    "ici_data_parallelism=-1",
    "ici_fsdp_parallelism=1",
    "max_target_length=64",
  ]


def test_the_sft_tutorials_command_on_a_local_parquet_is_the_sft_run(tmp_path, sft_files, teacher_step):
  tokenizer, data = sft_files
  upstream_args = _tutorial_sft_args(tmp_path, tokenizer, data, teacher_step)
  canonical_args = _canonical_sft_args(tmp_path, tokenizer, data, teacher_step)
  upstream = config_lib.load(["post_train/sft.yml", *upstream_args[1:]], {"use_sft": True})
  canonical = config_lib.load(["base.yml", *canonical_args, "profiler_steps=5"])
  assert _without_run_place(upstream) == _without_run_place(canonical)
  _run_module("MaxText.sft_trainer", *upstream_args)
  run_train(tmp_path, "run_name=canonical", *canonical_args[1:])  # the same keys: bf16, log_period 10
  assert os.listdir(tmp_path / "sft" / "tensorboard" / "plugins" / "profile")  # profiler=xplane traced
  sft_records = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "sft") if "loss" in r}
  assert sft_records[3] == train_losses(tmp_path / "canonical")[3]


def _load(*args, yml="base.yml"):
  return config_lib.load([yml, *args])


def test_both_names_of_one_setting_with_different_values_are_refused_naming_both():
  with pytest.raises(config_lib.ConfigError, match=r"^distill_alpha=0.3 and kd_alpha=0.4 in the command line"):
    _load("use_kd=true", "distill_alpha=0.3", "kd_alpha=0.4")
  assert _load("use_kd=true", "distill_alpha=0.3", "kd_alpha=0.3").kd_alpha == 0.3  # the same value twice is fine
  with pytest.raises(config_lib.ConfigError, match="teacher_overrides sets kd_teacher_model_name='tiny' and the"):
    _load("use_kd=true", "teacher_overrides.model_name=tiny", "kd_teacher_model_name=demo")


def test_blocks_and_precedence_are_upstreams(tmp_path):
  (tmp_path / "t").mkdir()
  config = _load(
    "model_name=demo",
    "student_overrides.model_name=tiny",  # student_overrides win over the command line
    "use_kd=true",
    f"teacher_overrides.load_parameters_path={tmp_path / 't'}",
    "teacher_overrides.model_name=tiny",
    "teacher_overrides.base_emb_dim=64",
    "distill_alpha_end=None",
  )
  assert (config.model_name, config.emb_dim) == ("tiny", 32)
  teacher = pyconfig.teacher_config(config)
  assert (teacher.emb_dim, teacher.num_decoder_layers, config.kd_teacher_overrides) == (64, 2, "emb_dim=64")
  assert config.kd_alpha_end == -1.0  # None = unset


@pytest.mark.parametrize(
  "args, message",
  [
    (
      ["use_kd=true", "distill_beta=0.0", "distill_beta_end=0.5", "distill_beta_schedule=linear"],
      "distill_beta (kd_beta here): 0 with",
    ),
    (["use_kd=true", "teacher_overrides.vocab_size=512", "teacher_overrides.load_parameters_path=."], "vocab_size 512"),
    (["use_kd=true", "teacher_overrides.model_name=tiny"], "teacher_overrides.load_parameters_path: the teacher's"),
    (["dataset_type=hf", "hf_path=OptimalScale/ClimbMix"], "hf_path: 'OptimalScale/ClimbMix' names a Hugging Face"),
    (["dataset_type=hf", "hf_path=parquet"], "hf_train_files: required with hf_path=parquet"),
    (["dataset_type=hf", "hf_path=parquet", "hf_train_files=x", "train_split=train_sft"], "train_split: 'train_sft'"),
    (["ici_expert_parallelism=-1"], "ici_expert_parallelism: -1 fills the mesh"),
    (["ici_expert_parallelism=4"], "ici_expert_parallelism: 4 is not supported here: the models are dense"),
    (["enable_nnx=false"], "enable_nnx: False is not supported here"),
    (["profiler=nsys"], "profiler: 'nsys' is not supported here"),
    (["lora={enable_lora: true}"], "lora.enable_lora: LoRA/QLoRA is not supported"),
    (["teacher_overrides.learning_rate=1"], "teacher_overrides.learning_rate: the teacher takes model keys"),
    (["train_data_columns=['a','b']"], "train_data_columns: one column"),
  ],
)
def test_upstreams_refusals_and_unsupported_keys_are_one_line_errors(args, message):
  with pytest.raises(config_lib.ConfigError) as error:
    _load(*args)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_the_distillation_entry_point_needs_a_teacher_and_refuses_upstream_checkpoints(tmp_path, capsys):
  assert launch.distill(["train_distill", "model_name=tiny"], "usage") == 2
  assert "teacher_overrides.load_parameters_path: the teacher's checkpoint is missing" in capsys.readouterr().err
  (tmp_path / "0" / "items").mkdir(parents=True)  # the layout of upstream's converter
  with pytest.raises(config_lib.ConfigError, match=r"load_parameters_path: .* is an upstream MaxText checkpoint"):
    pyconfig.initialize(["base.yml", f"load_parameters_path={tmp_path / '0' / 'items'}"])


@pytest.mark.parametrize("ipc_format", ["stream", "file"])
def test_hf_path_arrow_reads_the_files_datasets_writes_for_text_and_conversations(tmp_path, sft_files, ipc_format):
  from MaxText.data import input_pipeline, sft

  table = pa.table({"text": ["first document", "second one"], "messages": [CONVERSATIONS[0], CONVERSATIONS[1]]})
  path = tmp_path / "data-00000-of-00001.arrow"
  with pa.OSFile(str(path), "wb") as sink:
    new_writer = pa.ipc.new_stream if ipc_format == "stream" else pa.ipc.new_file
    with new_writer(sink, table.schema) as writer:
      writer.write_table(table)
  text = _load("dataset_type=hf", "hf_path=arrow", f"hf_train_files={path}", "train_data_columns=['text']")
  assert (text.dataset_type, text.data_column) == ("arrow", "text")
  docs = input_pipeline.open_documents(text)
  assert [docs[i] for i in range(len(docs))] == ["first document", "second one"]
  chats = _load(
    "use_sft=true",
    "dataset_type=hf",
    "hf_path=arrow",
    f"hf_train_files={path}",
    "tokenizer_type=huggingface",
    f"tokenizer_path={sft_files[0]}",
  )
  assert sft.read_conversations(chats, [str(path)]) == CONVERSATIONS[:2]
