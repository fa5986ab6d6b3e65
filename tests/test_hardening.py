"""The guarantees behind the one-line errors: unit checks of each rule the bad-input set exercises end to end."""

import errno
import json
import logging
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from MaxText.config import errors
from MaxText.config.errors import ConfigError
from MaxText.config.paths import check_output_folder, check_scheme
from MaxText.max_utils import kl_divergence_between_logits as kl
from MaxText.model.params_io import CheckpointError
from MaxText.training import checkpointing
from MaxText.training.metrics import NonFiniteLossError, check_trainable, keep_records_up_to
from tests.conftest import REPO

TEACHER = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))


def _sums(loss_sum=4.0, grad_norm=0.5):
  return {"ce_sum": loss_sum, "z_loss_sum": 0.0, "tokens": 2.0, "grad_norm": grad_norm}


def test_the_stop_names_the_loss_or_the_gradient_norm():
  check_trainable(1, _sums())  # a healthy step passes
  check_trainable(1, {"ce_sum": 4.0, "tokens": 2.0})  # eval sums have no gradient norm
  with pytest.raises(NonFiniteLossError, match=r"step 3: the loss is nan \(not finite\)"):
    check_trainable(3, _sums(loss_sum=float("nan")))
  with pytest.raises(NonFiniteLossError, match=r"the gradient norm is nan \(not finite\) while the loss is 2"):
    check_trainable(4, _sums(grad_norm=float("nan")))
  with pytest.raises(NonFiniteLossError, match="the gradient norm is exactly 0 at loss 2"):
    check_trainable(5, _sums(grad_norm=0.0))


def test_records_after_the_resumed_step_are_dropped_and_a_cut_line_too(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
  path.write_text("\n".join(lines) + '\n{"step": 5, "lo')
  keep_records_up_to(str(path), 2)
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
  keep_records_up_to(str(tmp_path / "absent.jsonl"), 2)  # nothing to do


def test_kl_is_plus_inf_where_the_student_rules_out_teacher_mass_and_never_negative():
  minus_inf = -jnp.inf
  assert np.isposinf(float(kl(jnp.full((1, 3), minus_inf), TEACHER, 1.0)[0]))  # a row of -inf
  assert np.isposinf(float(kl(jnp.array([[0.0, 0.0, minus_inf]]), TEACHER, 1.0)[0]))  # teacher mass 0.2 there
  bucket = kl(jnp.array([[0.0, 0.0, minus_inf]]), TEACHER, 1.0, top_k=2, use_other_bucket=True)
  assert np.isposinf(float(bucket[0]))  # OTHER holds mass 0.2, the student none outside the kept set
  # where the teacher has no mass either, the -inf is harmless: a finite, exact value
  teacher = jnp.array([[1.0, 0.0, minus_inf]])
  value = kl(jnp.array([[0.0, 0.0, minus_inf]]), teacher, 1.0)
  p = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
  np.testing.assert_allclose(value, [np.sum(p * (np.log(p) - np.log(0.5)))], rtol=1e-6)
  rng = np.random.default_rng(0)
  for _ in range(20):
    student, teacher = (jnp.asarray(rng.normal(size=(4, 9)) * 30, jnp.float32) for _ in range(2))
    assert float(jnp.min(kl(student, teacher, 0.5, top_p=0.9, use_other_bucket=True))) >= 0.0


def test_cloud_urls_and_unwritable_output_folders_are_named(tmp_path, monkeypatch):
  with pytest.raises(ConfigError, match="base_output_directory: 'ftp://b/x' is a ftp:// path; use a local path or"):
    check_scheme("base_output_directory", "ftp://b/x")
  check_scheme("base_output_directory", "gs://b/x")  # the storage layer speaks gs:// (gcsfs is installed)
  check_scheme("dataset_path", "data/part-*.txt")  # a local glob is fine
  check_output_folder("kd_offline_output_dir", str(tmp_path / "new" / "cache"), ())  # created later
  monkeypatch.setattr("os.access", lambda path, mode: False)  # this machine runs as root: permissions do not bite
  with pytest.raises(ConfigError, match="kd_offline_output_dir: .* is not writable"):
    check_output_folder("kd_offline_output_dir", str(tmp_path), ())


def test_a_bucket_whose_client_hangs_is_given_up_on_after_the_probe_time(monkeypatch):
  import threading

  from MaxText.config import storage
  from MaxText.config.paths import check_reachable

  released = threading.Event()
  monkeypatch.setattr(storage, "PROBE_SECONDS", 0.3)
  monkeypatch.setattr(storage, "_endpoint", lambda url_scheme: ("127.0.0.1", 1))  # not reached: a proxy is set
  monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
  monkeypatch.setattr(storage, "exists", lambda path: released.wait(30))  # a client stuck in its retries
  storage.probe_bucket.cache_clear()
  try:
    expected = r"^dataset_path: 'gs://slow/d\*.txt': cannot reach the bucket 'gs://slow': no answer within 0.3 s$"
    with pytest.raises(ConfigError, match=expected):
      check_reachable("dataset_path", "gs://slow/d*.txt")
  finally:
    released.set()
    storage.probe_bucket.cache_clear()
  check_reachable("dataset_path", "/local/path/is/never/probed.txt")
  monkeypatch.undo()
  for emulator, endpoint in (("localhost:9023", ("localhost", 9023)), ("http://127.0.0.1:4443", ("127.0.0.1", 4443))):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    assert storage._endpoint("gs") == endpoint
  monkeypatch.delenv("STORAGE_EMULATOR_HOST")
  assert storage._endpoint("gs") == ("storage.googleapis.com", 443)


@pytest.fixture
def silent_endpoint(monkeypatch):
  """A local socket that accepts connections and never answers (a host that resolves but hangs, as behind a
  firewall that drops replies or a stuck proxy) as the gs:// endpoint; the probe's bound cut to 0.5 s."""
  import socket
  import threading

  from MaxText.config import storage

  server = socket.create_server(("127.0.0.1", 0))
  accepted, stop = [], threading.Event()

  def accept_forever():
    server.settimeout(0.1)
    while not stop.is_set():
      try:
        accepted.append(server.accept()[0])
      except TimeoutError:
        continue

  acceptor = threading.Thread(target=accept_forever, daemon=True)
  acceptor.start()
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.getsockname()[1]}")
  monkeypatch.setattr(storage, "PROBE_SECONDS", 0.5)
  storage.probe_bucket.cache_clear()
  yield accepted
  stop.set()
  acceptor.join()
  for connection in [*accepted, server]:
    connection.close()
  storage.probe_bucket.cache_clear()


@pytest.mark.parametrize(
  "keys, key",
  [
    (["dataset_type=text", "dataset_path=gs://hung-data/d.txt"], "dataset_path"),
    (["use_kd=true", "kd_teacher_parameters_path=gs://hung-teacher/t"], "kd_teacher_parameters_path"),
    (["use_kd=true", "kd_offline_data_dir=gs://hung-cache/c"], "kd_offline_data_dir"),
    (["base_output_directory=gs://hung-runs/r"], "base_output_directory"),
  ],
)
def test_a_bucket_host_that_accepts_and_never_answers_fails_in_one_line(silent_endpoint, keys, key):
  from MaxText.config import load

  value = keys[-1].split("=", 1)[1]
  bucket = "gs://" + value[5:].split("/")[0]
  expected = f"^{key}: '{value}': cannot reach the bucket '{bucket}': no answer within 0.5 s$"
  with pytest.raises(ConfigError, match=expected):
    load(["base.yml", "model_name=tiny", *keys])
  assert silent_endpoint  # the connection was made: the client hung on a host that answers TCP, not a closed port


class _FailingManager:
  directory = "/runs/r/checkpoints"

  def __init__(self, error):
    self.error = error

  def save(self, *args, **kwargs):
    raise self.error

  def wait_until_finished(self):
    raise self.error


def test_a_checkpoint_that_cannot_be_written_stops_with_one_line_and_a_bug_keeps_its_type():
  state = {"step": 0, "params": {}, "opt_state": {}}
  read_only = OSError(errno.EROFS, "Read-only file system")
  with pytest.raises(CheckpointError, match="checkpoint step 7 cannot be written in /runs/r/checkpoints"):
    checkpointing.save(_FailingManager(read_only), 7, state, None)
  wrapped = RuntimeError("background save failed")
  wrapped.__cause__ = read_only  # how a background write's failure comes back
  with pytest.raises(CheckpointError, match="a checkpoint cannot be written .*Read-only file system"):
    checkpointing.wait_until_finished(_FailingManager(wrapped))
  with pytest.raises(TypeError):  # not a file problem: a bug, left as it is
    checkpointing.save(_FailingManager(TypeError("bad argument")), 7, state, None)


def test_async_leftovers_of_a_failed_read_are_dropped_and_nothing_else(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
  errors.silence_async_leftovers()

  class Unraisable:
    def __init__(self, error, obj=None):
      self.exc_value, self.object = error, obj

  def coroutine_from(filename):  # a coroutine whose code lives in `filename`, as Orbax's reads do
    namespace = {}
    exec(compile("async def _read_array_index_and_device_put():\n  pass\n", filename, "exec"), namespace)
    return namespace["_read_array_index_and_device_put"]()

  orbax_read = coroutine_from(os.path.join("site-packages", "orbax", "checkpoint", "serialization.py"))
  own_read = coroutine_from(os.path.join("MaxText", "data", "reader.py"))
  sys.unraisablehook(Unraisable(RuntimeError("Event loop is closed")))
  sys.unraisablehook(Unraisable(RuntimeError("something else")))
  sys.unraisablehook(Unraisable(Exception("Encountered error while reading array index"), orbax_read))
  sys.unraisablehook(Unraisable(Exception("a read of ours failed"), own_read))
  orbax_read.close(), own_read.close()
  assert seen == ["something else", "a read of ours failed"]
  logged = []
  handler = logging.Handler()
  handler.emit = lambda record: logged.append(record.getMessage())
  asyncio_logger = logging.getLogger("asyncio")
  asyncio_logger.addHandler(handler)
  try:
    asyncio_logger.error("Task exception was never retrieved\nfuture: <Task finished ...>")
    asyncio_logger.error("_GatheringFuture exception was never retrieved\nfuture: <_GatheringFuture finished>")
    asyncio_logger.error("Future exception was never retrieved\nfuture: <Future finished ...>")
    asyncio_logger.error("Unclosed client session")
    asyncio_logger.error("a read failed: Task exception was never retrieved")  # not asyncio's record: kept
  finally:
    asyncio_logger.removeHandler(handler)
  assert logged == ["Unclosed client session", "a read failed: Task exception was never retrieved"]


def test_without_jax_platforms_set_a_user_error_is_still_one_line(tmp_path):
  # libtpu is installed with the test extras; on a host without an accelerator the jobs default JAX to
  # CPU, so libtpu's page of start-up warnings never lands under the one error line.
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  train = os.path.join(REPO, "MaxText", "train.py")
  args = [
    "base.yml",
    "model_name=tiny",
    "steps=1",
    "dataset_path=/no/such/file.txt",
    f"base_output_directory={tmp_path}",
  ]
  proc = subprocess.run([sys.executable, train, *args], env=env, cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == ["error: dataset_path: no readable files match '/no/such/file.txt'"]


def test_verification_reads_every_shard_and_names_the_first_damaged_one(tmp_path):
  from array_record.python.array_record_module import ArrayRecordWriter

  from MaxText.data.array_records import first_damaged

  rng = np.random.default_rng(0)
  files = []
  for index in range(3):
    path = str(tmp_path / f"shard-{index}.array_record")
    writer = ArrayRecordWriter(path, "group_size:4")
    for _ in range(40):
      writer.write(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())  # incompressible: the flip hits a payload
    writer.close()
    files.append(path)
  assert first_damaged(files) is None
  size = os.path.getsize(files[1])
  with open(files[1], "r+b") as f:  # one bit in the middle of the second shard
    f.seek(size // 2)
    byte = f.read(1)
    f.seek(size // 2)
    f.write(bytes([byte[0] ^ 0x01]))
  index, reason = first_damaged(files)
  assert index == 1 and "hash mismatch" in reason, reason
