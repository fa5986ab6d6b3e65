"""The ahead-of-time compile job: TPU topologies on this CPU host (libtpu), the exact step of every kind
of run, the printed memory as XLA reports it, and the over-capacity verdict."""

import os
import sys

import forked_jobs
import pytest

pytest.importorskip("libtpu")

from MaxText import config as config_lib  # noqa: E402
from MaxText.config import ConfigError  # noqa: E402
from MaxText.training import aot  # noqa: E402
from tests.conftest import REPO  # noqa: E402

TINY = {"model_name": "tiny", "dataset_type": "synthetic", "max_target_length": 64, "per_device_batch_size": 2}
JOB = [sys.executable, os.path.join(REPO, "MaxText", "train_compile.py"), "base.yml"]


def _job(*args, **env_vars):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_vars}
  return forked_jobs.run([*JOB, *args], cwd=REPO, env=env, timeout=600)


@pytest.mark.parametrize(
  "name, chips, devices_per_chip",
  [("v5p-8", 4, 1), ("v5p-16", 8, 1), ("v5e-4", 4, 1), ("v6e-8", 8, 1), ("v5e-16", 16, 1)],
)
def test_topology_names_count_tensorcores_as_cloud_tpu_does(name, chips, devices_per_chip):
  topology = aot.parse_topology(name, 1)
  assert topology.chips == chips
  assert len(topology.devices()) == chips * devices_per_chip  # one JAX device per chip (megacore on v5p)


@pytest.mark.parametrize("name", ["v5p-12", "v7-8", "v5e", "v5p-1"])
def test_bad_topologies_are_refused_by_name(name):
  with pytest.raises(ConfigError, match="compile_topology"):
    aot.parse_topology(name, 1)


def test_printed_memory_is_xla_memory_analysis_and_a_plain_run_fits(tmp_path):
  cache = tmp_path / "jax_cache"  # a user's persistent compilation cache
  proc = _job("compile_topology=v5p-8", *(f"{k}={v}" for k, v in TINY.items()), JAX_COMPILATION_CACHE_DIR=str(cache))
  assert proc.returncode == 0, proc.stderr[-3000:]
  # a TPU executable cannot be loaded back from the cache on this host: the job writes none there
  assert not cache.exists() or not any(cache.iterdir())
  report = aot.compile_step(config_lib.load_dict(TINY), aot.parse_topology("v5p-8", 1))
  assert report.fits and report.devices == 4 and report.global_batch == 8
  assert report.attention == "splash" and "global batch 8, splash attention" in proc.stdout  # autoselect on TPU
  assert report.remat.startswith("auto -> none (") and f"remat_policy {report.remat};" in proc.stdout
  printed = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
  temp_mib = report.temp_bytes / 2**20
  assert f"{temp_mib:,.1f} MiB" in printed["temporaries"]
  assert f"{report.peak_bytes / 2**20:,.1f} MiB of 95.00 GiB HBM" in printed["total"]
  assert report.peak_bytes == report.argument_bytes + report.temp_bytes + report.output_bytes - report.alias_bytes
  assert proc.stdout.strip().endswith("fits")


def test_every_kind_of_run_compiles_with_its_own_memory_parts():
  topology = aot.parse_topology("v5p-8", 1)
  plain = aot.compile_step(config_lib.load_dict(TINY), topology)
  online = aot.compile_step(config_lib.load_dict({**TINY, "use_kd": True, "kd_top_k": 8}), topology)
  offline = aot.compile_step(config_lib.load_dict({**TINY, "use_kd": True, "kd_offline_data_dir": "/cache"}), topology)
  feature = aot.compile_step(config_lib.load_dict({**TINY, "use_kd": True, "kd_beta": 0.5}), topology)
  accumulate = aot.compile_step(config_lib.load_dict({**TINY, "gradient_accumulation_steps": 2}), topology)
  assert plain.parts["teacher"] == 0 and online.parts["teacher"] == plain.parts["parameters"]  # self-distillation
  assert offline.parts["teacher"] == 0 and offline.parts["batch"] > plain.parts["batch"]  # top-k rides in the batch
  assert feature.parts["kd_head"] > 0 and plain.parts["kd_head"] == 0
  assert accumulate.parts == plain.parts and accumulate.temp_bytes != plain.temp_bytes


def test_an_ensemble_step_holds_every_teachers_parameters():
  topology = aot.parse_topology("v5p-8", 1)
  narrow, wide = {"parameters_path": "/narrow"}, {"parameters_path": "/wide", "overrides": {"emb_dim": 64}}
  kd = {**TINY, "use_kd": True, "kd_top_p": 0.9}
  teacher_bytes = [
    aot.compile_step(config_lib.load_dict({**kd, "kd_teachers": teachers}), topology).parts["teacher"]
    for teachers in ([narrow], [wide], [narrow, wide])
  ]
  assert teacher_bytes[0] < teacher_bytes[1] and teacher_bytes[2] == teacher_bytes[0] + teacher_bytes[1]


def test_a_step_that_does_not_fit_gets_a_one_line_verdict():
  too_big = [*(f"{k}={v}" for k, v in TINY.items() if k != "per_device_batch_size")]
  proc = _job(
    "compile_topology=v5e-4", *too_big, "per_device_batch_size=512", "attention=dot_product", "max_target_length=4096"
  )
  assert proc.returncode == 1, proc.stdout[-2000:]
  error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(error_lines) == 1 and "does not fit v5e-4: HLO temporaries need" in error_lines[0], proc.stderr[-3000:]
  # the culprit is named: dot_product's float32 scores [batch, kv heads, heads per group, L, L]
  assert "largest arrays of the step (global shapes): f32[2048,2,2,4096,4096] 512.00 GiB" in error_lines[0]


def test_the_job_without_a_topology_is_a_config_error():
  proc = _job("model_name=tiny")
  assert proc.returncode == 2 and "compile_topology: the TPU slice to compile for must be given" in proc.stderr


def test_auto_mlp_pieces_cut_sequences_into_pieces_of_at_most_2048_tokens():
  from MaxText.model.layers import mlp_pieces

  assert [mlp_pieces(0, length) for length in (32, 2048, 2049, 4096, 8192, 4097)] == [1, 1, 3, 2, 4, 17]
  assert mlp_pieces(3, 8192) == 3  # a count that is set is kept


@pytest.mark.slow
def test_the_default_mlp_pieces_hold_less_memory_at_long_sequences():
  """The compile job's default (mlp_sequence_chunks=0, auto: 2 pieces at 4096 tokens) against the MLP run
  whole, on a layer whose MLP is 8x its width (llama3.1-8b, 3.5x, at 4 x 8192: 40.16 -> 34.55 GiB, docs/)."""
  keys = {**TINY, "max_target_length": 4096, "per_device_batch_size": 1, "dtype": "bfloat16", "remat_policy": "full"}
  keys |= {"num_decoder_layers": 1, "emb_dim": 256, "head_dim": 64, "mlp_dim": 2048}
  topology = aot.parse_topology("v5p-8", 1)
  default = aot.compile_step(config_lib.load_dict(keys), topology)
  whole = aot.compile_step(config_lib.load_dict({**keys, "mlp_sequence_chunks": 1}), topology)
  assert default.temp_bytes < 0.8 * whole.temp_bytes  # 60.0 against 91.1 MiB
