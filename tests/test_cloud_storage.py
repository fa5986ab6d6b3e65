"""gs:// paths end to end against a real GCS JSON API: the gcp-storage-emulator package serving a bucket on
localhost, with every client pointed at it (gcsfs and google-cloud-storage by STORAGE_EMULATOR_HOST,
tensorstore - under Orbax - by TENSORSTORE_GCS_HTTP_URL).

One gap of the emulator is filled here: its media downloads omit the `x-goog-generation` header GCS
sends, and tensorstore needs it (without it OCDBT's manifest update fails with "Malformed
StorageGeneration"); `_with_generation_header` adds it from the object's own metadata."""

import json
import os
import re
import sys

import forked_jobs
import numpy as np
import pytest
from chat_files import WORDS, chat_tokenizer_folder
from conftest import REPO, TINY, free_port, run_train

from MaxText.config import storage

BUCKET = "kd-bucket"


def _with_generation_header(objects):
  download = objects.download

  def download_with_generation(request, response, storage_, *args, **kwargs):
    download(request, response, storage_, *args, **kwargs)
    try:
      obj = storage_.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 - a missing object: the 404 is already set
      return
    response["x-goog-generation"] = obj["generation"]
    response["x-goog-metageneration"] = obj["metageneration"]

  objects.download = download_with_generation  # `objects.get` (alt=media) looks the name up per call


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator in a thread of this process (the jobs under test reach it from their subprocesses)."""
  try:
    from gcp_storage_emulator.handlers import objects
    from gcp_storage_emulator.server import create_server
  except ImportError as e:
    pytest.skip(f"gcp-storage-emulator is not installed ({e})")
  _with_generation_header(objects)
  port = free_port()
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  try:
    server.start()
  except OSError as e:
    pytest.skip(f"the storage emulator cannot start on port {port}: {e}")
  endpoint = f"http://127.0.0.1:{port}"
  env = {
    "STORAGE_EMULATOR_HOST": endpoint,
    "TENSORSTORE_GCS_HTTP_URL": endpoint,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: skip the credential lookup
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: no gRPC bucket-layout probe (no gRPC in the emulator)
    "MAXTEXT_STAGING_DIR": str(tmp_path_factory.mktemp("staging")),
  }
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield f"gs://{BUCKET}"
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value
  server.stop()


def _upload_inputs(bucket, tmp_path):
  """A JSONL corpus and a Hugging Face tokenizer folder, in the bucket."""
  rng = np.random.default_rng(0)
  words = WORDS.split()
  lines = [json.dumps({"text": " ".join(rng.choice(words, size=rng.integers(3, 12)))}) for _ in range(300)]
  storage.write_text_atomic(f"{bucket}/data/docs.jsonl", "\n".join(lines))
  chat_tokenizer_folder(tmp_path / "tok")
  for name in ("tokenizer.json", "tokenizer_config.json"):
    storage.copy(str(tmp_path / "tok" / name), f"{bucket}/tok/{name}")


def _metrics(run_dir):
  return [json.loads(line) for line in storage.read_text(f"{run_dir}/metrics.jsonl").splitlines()]


def _losses(run_dir):
  return {r["step"]: r["loss"] for r in _metrics(run_dir) if "loss" in r}


@pytest.mark.slow
def test_train_resume_kd_and_offline_kd_entirely_on_gs_paths(gcs, tmp_path):
  _upload_inputs(gcs, tmp_path)
  data = [
    "dataset_type=jsonl",
    f"dataset_path={gcs}/data/docs.jsonl",
    "tokenizer_type=huggingface",
    f"tokenizer_path={gcs}/tok",
  ]
  runs = f"{gcs}/runs"
  base = [*TINY, *data, "learning_rate=1e-2", "checkpoint_period=3", "eval_interval=4", "eval_steps=2"]

  # train a teacher, then resume it in a new process from its last checkpoint
  run_train(runs, *base, "run_name=teacher", "steps=6")
  resumed = run_train(runs, *base, "run_name=teacher", "steps=8")
  assert "resumed from checkpoint at step 6" in resumed.stdout
  assert sorted(_losses(f"{runs}/teacher")) == list(range(1, 9))
  assert {"6", "8"} <= set(storage.listdir(f"{runs}/teacher/checkpoints"))
  assert any(n.startswith("events.out.tfevents") for n in storage.listdir(f"{runs}/teacher/tensorboard"))

  # eval-only of the teacher's checkpoint in the bucket reproduces the run's eval at that step
  teacher = f"{runs}/teacher/checkpoints/8"
  want = next(r["eval/loss"] for r in _metrics(f"{runs}/teacher") if r["step"] == 8 and "eval/loss" in r)
  scored = run_train(runs, *base, "eval_only=true", f"load_parameters_path={teacher}")
  assert f"eval_only {teacher}: loss {want:.6f}" in scored.stdout

  # online KD from that teacher's checkpoint in the bucket
  kd = [*base, "use_kd=true", f"kd_teacher_parameters_path={teacher}", "kd_alpha=0.5", "steps=4"]
  run_train(runs, *kd, "run_name=student")
  student = _metrics(f"{runs}/student")
  assert all(np.isfinite(r["kd/kl_div_T1"]) for r in student if "kd/kl_div_T1" in r)

  # offline: save the teacher's top-k to the bucket, then train from it
  cache = f"{gcs}/cache"
  save = [sys.executable, os.path.join(REPO, "MaxText", "save_top_k_teacher_logits.py"), "base.yml", *TINY, *data]
  save += ["use_kd=true", f"kd_teacher_parameters_path={teacher}", f"kd_offline_output_dir={cache}", "steps=3"]
  save += ["kd_offline_top_k=8", "kd_offline_batches_per_shard=2"]

  proc = forked_jobs.run(save, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  manifest = json.loads(storage.read_text(f"{cache}/manifest.json"))
  assert manifest["sequences"] == 3 * 4 and len(manifest["shards"]) == 2
  offline = [*base, "use_kd=true", f"kd_offline_data_dir={cache}", "kd_alpha=0.9", "steps=3"]
  out = run_train(runs, *offline, "run_name=offline")
  assert "OFFLINE" in out.stdout
  assert sorted(_losses(f"{runs}/offline")) == [1, 2, 3]

  # the converter, both directions, bucket to bucket: the re-imported teacher scores as the checkpoint did
  convert = [sys.executable, "-m", "MaxText.convert_hf_checkpoint"]
  export = ["--to_hf", "--checkpoint", teacher, "--output", f"{gcs}/hf"]
  for args in (export, ["--hf_dir", f"{gcs}/hf", "--output", f"{gcs}/imported"]):
    proc = forked_jobs.run([*convert, *args], cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "model.safetensors" in storage.listdir(f"{gcs}/hf")
  rescored = run_train(runs, *base, "eval_only=true", f"load_parameters_path={gcs}/imported")
  loss = float(re.search(r"eval_only \S+: loss ([0-9.]+)", rescored.stdout).group(1))
  assert abs(loss - want) <= 1e-5 * want  # a float32 export and import

  # nothing landed on the local disk under a folder named after the URL
  assert not os.path.exists(os.path.join(REPO, "gs:"))


def test_a_missing_bucket_is_named_before_anything_runs(gcs, tmp_path):
  proc = run_train("gs://no-such-bucket/runs", *TINY, "steps=1", check=False)
  assert proc.returncode != 0
  assert "base_output_directory: 'gs://no-such-bucket/runs': the bucket 'gs://no-such-bucket' does not" in (
    proc.stdout + proc.stderr
  )
