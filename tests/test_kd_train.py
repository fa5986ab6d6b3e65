"""Distillation end to end through MaxText/train.py: a trained teacher, self-distillation, alpha = 0, errors."""

import re

import numpy as np
import pytest

from MaxText import pyconfig
from MaxText.pyconfig import ConfigError
from tests.conftest import TINY, kill_and_resume, read_metrics, run_train, train_losses

TEACHER = ["emb_dim=64", "num_decoder_layers=3", "mlp_dim=128"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("teacher")
  run_train(
    out, *TINY, *TEACHER, "run_name=teacher", "steps=40", "learning_rate=5e-3", "checkpoint_period=40", "log_period=10"
  )
  return out / "teacher" / "checkpoints" / "40"


def _kd_records(run_dir):
  return [r for r in read_metrics(run_dir) if "kd/kl_div_T1" in r]


def test_kd_against_a_trained_deeper_wider_teacher_lowers_kl(tmp_path, teacher_dir):
  proc = run_train(
    tmp_path,
    *TINY,
    "run_name=student",
    "steps=30",
    "learning_rate=5e-3",
    "use_kd=true",
    f"kd_teacher_parameters_path={teacher_dir}",
    "kd_teacher_model_name=tiny",
    f"kd_teacher_overrides={','.join(TEACHER)}",
    "kd_alpha=0.8",
    "kd_temperature=2.0",
    "kd_top_p=0.95",
    "kd_use_other_bucket=true",
    "eval_interval=30",
    "eval_steps=2",
  )
  assert "distillation: teacher" in proc.stdout and "kd: hard" in proc.stdout
  records = _kd_records(tmp_path / "student")
  kl = [r["kd/kl_div_T1"] for r in records if "step" in r and "kd/alpha" in r]
  assert np.mean(kl[-5:]) < 0.7 * np.mean(kl[:3]), kl
  last = records[-2]
  for key in (
    "kd/soft_loss",
    "kd/hard_loss",
    "kd/teacher_loss",
    "kd/student_perplexity",
    "kd/teacher_perplexity",
    "kd/kl_div_at_T",
    "kd/kl_div_T1",
    "kd/total_loss",
    "kd/alpha",
    "kd/temperature",
    "kd/teacher_mass_kept",
    "kd/top1_agreement",
  ):
    assert np.isfinite(last[key]), key
  assert last["kd/alpha"] == pytest.approx(0.8) and last["kd/temperature"] == pytest.approx(2.0)
  assert 0.9 < last["kd/teacher_mass_kept"] <= 1.0
  assert last["kd/teacher_loss"] < last["kd/hard_loss"]  # the teacher is the better model
  evals = [r for r in read_metrics(tmp_path / "student") if "eval/kd/kl_div_T1" in r]
  assert evals and evals[-1]["eval/kd/teacher_loss"] < evals[-1]["eval/loss"]
  assert "fidelity: KL(teacher||student)" in proc.stdout

  # eval_only with the teacher reports the same fidelity as the run's own eval at its last step; the teacher
  # scored against itself has KL 0 and top-1 agreement 1
  teacher = [f"kd_teacher_parameters_path={teacher_dir}", "kd_teacher_model_name=tiny"]
  teacher.append(f"kd_teacher_overrides={','.join(TEACHER)}")
  student = tmp_path / "student" / "checkpoints" / "30"
  scored = _eval_only_fidelity(tmp_path, f"load_parameters_path={student}", *teacher)
  for key, value in scored.items():
    assert value == pytest.approx(evals[-1][f"eval/kd/{key}"], abs=1e-4), key  # printed to 4 decimals
  itself = _eval_only_fidelity(tmp_path, f"load_parameters_path={teacher_dir}", *teacher)
  assert itself["kl_div_T1"] < 1e-4 and itself["top1_agreement"] == 1.0 and itself["expected_acceptance_T1"] == 1.0
  assert 0 < scored["expected_acceptance_T1"] < 1


FIDELITY = re.compile(
  r"fidelity: KL\(teacher\|\|student\) ([0-9.]+) top-1 agreement ([0-9.]+) teacher p\(student top-1\) ([0-9.]+) "
  r"expected draft acceptance \(T = 1\) ([0-9.]+)"
)


def _eval_only_fidelity(tmp_path, *overrides) -> dict:
  proc = run_train(tmp_path / "never-written", *TINY, "eval_only=true", "use_kd=true", "eval_steps=2", *overrides)
  kl, top1, prob, acceptance = map(float, FIDELITY.search(proc.stdout).groups())
  return {
    "kl_div_T1": kl,
    "top1_agreement": top1,
    "teacher_prob_of_student_top1": prob,
    "expected_acceptance_T1": acceptance,
  }


def test_an_online_kd_run_killed_while_an_async_checkpoint_is_written_resumes_bit_for_bit(tmp_path, teacher_dir):
  teacher = [f"kd_teacher_parameters_path={teacher_dir}", "kd_teacher_model_name=tiny"]
  teacher += [f"kd_teacher_overrides={','.join(TEACHER)}", "kd_alpha=0.5", "kd_temperature=2.0"]
  run = [*TINY, "async_checkpointing=true", "steps=8", "checkpoint_period=2", "use_kd=true", *teacher]
  straight, resumed, stdout = kill_and_resume(tmp_path, *run, kill_after_save=4)
  assert int(re.search(r"resumed from checkpoint at step (\d+)", stdout).group(1)) in (2, 4)  # 4 if it landed
  assert sorted(resumed) == list(range(1, 9)) and resumed == straight


def test_self_distillation_with_empty_teacher_path_starts_at_zero_kl(tmp_path):
  proc = run_train(tmp_path, *TINY, "run_name=self", "steps=3", "use_kd=true", "kd_alpha=0.5")
  assert "SELF-DISTILLATION" in proc.stdout
  first = _kd_records(tmp_path / "self")[0]
  assert first["step"] == 1
  assert abs(first["kd/kl_div_T1"]) < 1e-6 and first["kd/top1_agreement"] == 1.0
  assert first["kd/teacher_loss"] == pytest.approx(first["kd/hard_loss"], rel=1e-6)


def test_self_distillation_starts_at_zero_with_each_divergence(tmp_path):
  """A whole run per divergence (top-p 0.9 + OTHER, T 2): the jitted step, metrics and the identity case."""
  for name, extra in (("reverse_kl", []), ("jsd", ["kd_jsd_beta=0.3"]), ("tvd", []), ("skew_reverse_kl", [])):
    kd = ["use_kd=true", f"kd_divergence={name}", *extra, "kd_top_p=0.9", "kd_use_other_bucket=true"]
    run_train(tmp_path, *TINY, f"run_name={name}", "steps=2", *kd, "kd_temperature=2.0")
    records = _kd_records(tmp_path / name)
    assert abs(records[0]["kd/kl_div_at_T"]) < 1e-6 and np.isfinite(records[-1]["kd/kl_div_at_T"]), name
    assert records[-1]["kd/kl_div_at_T"] > 0, name  # the student moved away from its initial self


def test_alpha_zero_reproduces_the_plain_cross_entropy_run(tmp_path):
  common = [*TINY, "steps=4", "learning_rate=3e-3", "enable_checkpointing=false"]
  run_train(tmp_path, *common, "run_name=plain")
  run_train(tmp_path, *common, "run_name=kd0", "use_kd=true", "kd_alpha=0.0", "kd_top_k=8")
  plain, kd0 = train_losses(tmp_path / "plain"), train_losses(tmp_path / "kd0")
  assert sorted(plain) == sorted(kd0) == [1, 2, 3, 4]
  for step in plain:
    assert kd0[step] == pytest.approx(plain[step], rel=1e-7, abs=0), step


def test_teacher_vocab_mismatch_and_architecture_mismatch_are_clear_errors(teacher_dir):
  base = {"model_name": "tiny", "use_kd": True, "kd_teacher_parameters_path": str(teacher_dir)}
  with pytest.raises(ConfigError, match="teacher vocab_size 512 differs from the student's vocab_size 320"):
    pyconfig.from_dict({**base, "kd_teacher_overrides": "vocab_size=512"})
  with pytest.raises(ConfigError, match=r"teacher emb_dim=32 but the checkpoint at .* was trained with emb_dim=64"):
    pyconfig.from_dict(base)
  with pytest.raises(
    ConfigError, match="unknown config key 'emb_dims' in kd_teacher_overrides; did you mean 'emb_dim'"
  ):
    pyconfig.from_dict({**base, "kd_teacher_overrides": "emb_dims=64"})
  config = pyconfig.from_dict({**base, "kd_teacher_overrides": ",".join(TEACHER), "emb_dim": 48})
  teacher = pyconfig.teacher_config(config)
  assert (config.emb_dim, teacher.emb_dim, teacher.num_decoder_layers, teacher.max_target_length) == (
    48,
    64,
    3,
    config.max_target_length,
  )  # the student's emb_dim=48 does not leak into the teacher


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"kd_alpha": 0.3}, "kd_alpha: set to 0.3 but use_kd is false"),
    ({"use_kd": True, "kd_alpha": 1.5}, "kd_alpha: expected a value in [0, 1], got 1.5"),
    ({"use_kd": True, "kd_temperature": 0.0}, "kd_temperature: expected a positive number, got 0.0"),
    ({"use_kd": True, "kd_top_k": -2}, "kd_top_k: expected a number >= 0, got -2"),
    ({"use_kd": True, "kd_top_p": 1.2}, "kd_top_p: expected a value in [0, 1], got 1.2"),
    ({"use_kd": True, "kd_top_k": 5, "kd_top_p": 0.9}, "kd_top_p: exclusive with kd_top_k"),
    ({"use_kd": True, "kd_use_other_bucket": True}, "kd_use_other_bucket: needs pruning"),
    ({"use_kd": True, "kd_use_hard_labels": True, "kd_top_k": 5}, "kd_top_k: has no effect with kd_use_hard_labels"),
    ({"use_kd": True, "kd_use_hard_labels": True, "kd_temperature": 2.0}, "kd_temperature: has no effect"),
    ({"use_kd": True, "kd_alpha_schedule": "cosine"}, "kd_alpha_end: required by kd_alpha_schedule=cosine"),
    ({"use_kd": True, "kd_temperature_schedule": "linear"}, "kd_temperature_end: required by"),
    ({"use_kd": True, "kd_alpha_schedule": "exponential", "kd_alpha_end": 0.1}, "kd_alpha_schedule: expected one of"),
    ({"use_kd": True, "kd_teacher_parameters_path": "/no/teacher"}, "kd_teacher_parameters_path: '/no/teacher' does"),
    ({"use_kd": True, "kd_teacher_model_name": "llama3.1-8b"}, "kd_teacher_model_name: a teacher architecture needs"),
    ({"use_kd": True, "kd_divergence": "wasserstein"}, "kd_divergence: expected one of forward_kl, reverse_kl, jsd"),
    ({"use_kd": True, "kd_jsd_beta": 0.3}, "kd_jsd_beta: has no effect with kd_divergence=forward_kl"),
    ({"use_kd": True, "kd_divergence": "jsd", "kd_jsd_beta": 1.5}, "kd_jsd_beta: expected a value in [0, 1]"),
    ({"use_kd": True, "kd_divergence": "tvd", "kd_skew_alpha": 0.2}, "kd_skew_alpha: has no effect with"),
    ({"use_kd": True, "kd_divergence": "skew_reverse_kl", "kd_skew_alpha": 1.0}, "kd_skew_alpha: expected a value"),
    ({"use_kd": True, "kd_use_hard_labels": True, "kd_divergence": "tvd"}, "kd_divergence: has no effect with kd_use"),
  ],
)
def test_kd_validation_errors(overrides, message):
  with pytest.raises(ConfigError) as info:
    pyconfig.from_dict(overrides)
  assert message in str(info.value) and "\n" not in str(info.value)


def test_unreadable_teacher_checkpoint_is_a_one_line_error(tmp_path):
  empty = tmp_path / "empty_teacher"
  empty.mkdir()
  proc = run_train(tmp_path, *TINY, "steps=1", "use_kd=true", f"kd_teacher_parameters_path={empty}", check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(f"error: parameters checkpoint '{empty}' cannot be read")


def test_a_teacher_with_another_tokenizer_is_refused_naming_both_vocabularies(tmp_path):
  from flax import nnx

  from MaxText.model import decoder, params_io
  from tests.chat_files import chat_tokenizer_folder

  teacher = tmp_path / "teacher"
  config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32"})
  params_io.save_params(str(teacher), decoder.split_params(decoder.Decoder(config, nnx.Rngs(0)))[1])
  chat_tokenizer_folder(teacher, vocab_size=300)  # the teacher folder carries its tokenizer, as converted ones do
  same, other = chat_tokenizer_folder(tmp_path / "same", 300), chat_tokenizer_folder(tmp_path / "other", 290)
  keys = ["base.yml", "model_name=tiny", "use_kd=true", f"kd_teacher_parameters_path={teacher}"]
  keys += ["tokenizer_type=huggingface", "dataset_type=synthetic"]
  pyconfig.initialize([*keys, f"tokenizer_path={same}"])  # one vocabulary: accepted
  message = r"kd_teacher_parameters_path: the teacher's tokenizer \(300 tokens, vocabulary \w+\) is not the student's"
  with pytest.raises(ConfigError, match=message + r" tokenizer_path \(290 tokens, vocabulary \w+\)"):
    pyconfig.initialize([*keys, f"tokenizer_path={other}"])
