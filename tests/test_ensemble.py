"""Teacher ensembles (`kd_teachers`, `kd_ensemble`): the combined target against a float64 reference, one
teacher = the single-teacher path, identical teachers = one, per-teacher metrics, the cache of an ensemble,
the keys' checks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import config as config_lib
from MaxText import pyconfig
from MaxText.config.teachers import TeacherSpec
from MaxText.distill.ensemble import EnsembleChunk, EnsembleTeacher
from MaxText.distill.kd_loss import KDOptions, kd_chunk_sums
from MaxText.distill.sources import LiveTeacher, Pruning
from MaxText.losses import targets
from MaxText.losses.divergence_family import Divergence, divergence
from tests.conftest import TINY, read_metrics, run_train, train_losses
from tests.test_kd_train import _eval_only_fidelity

PRUNINGS = [Pruning(), Pruning(top_k=6), Pruning(top_p=0.8, use_other_bucket=True), Pruning(top_p=0.7)]
MODES = ("probs", "logprobs")
ROWS, VOCAB = 10, 32


def _logits(seed, scale=2.5):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(ROWS, VOCAB)) * scale, jnp.float32)


def _softmax64(z, temperature):
  x = np.asarray(z, np.float64) / temperature
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference_ensemble(logits, weights, mode, temperature):
  """float64: sum_i w_i p_i(T), or the normalised prod_i p_i(T)^w_i."""
  if mode == "probs":
    return sum(w * _softmax64(z, temperature) for w, z in zip(weights, logits, strict=True))
  log_mean = sum(w * np.log(_softmax64(z, temperature)) for w, z in zip(weights, logits, strict=True))
  e = np.exp(log_mean - log_mean.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference_pruned(p, pruning: Pruning):
  """float64 pruning of a distribution: (kept mask, renormalised target or kept probs + OTHER mass)."""
  order = np.argsort(-p, axis=-1, kind="stable")
  kept = np.zeros_like(p)
  for row in range(p.shape[0]):
    if pruning.top_k:
      kept[row, order[row, : pruning.top_k]] = 1.0
    else:  # keep while the mass of strictly more probable tokens is < top_p
      before = np.cumsum(p[row, order[row]]) - p[row, order[row]]
      kept[row, order[row, before < pruning.top_p]] = 1.0
  if pruning.use_other_bucket:
    return kept, kept * p, ((1 - kept) * p).sum(-1)
  return kept, kept * p / (kept * p).sum(-1, keepdims=True), None


def _kl64(target, other, student, temperature, kept):
  """float64 forward KL of the full student from the target (renormalised, or + the OTHER outcome)."""
  q = _softmax64(student, temperature)
  value = np.where(target > 0, target * (np.log(np.where(target > 0, target, 1)) - np.log(q)), 0).sum(-1)
  if other is not None:
    q_other = ((1 - kept) * q).sum(-1)
    value = value + np.where(other > 0, other * np.log(np.maximum(other, 1e-300) / q_other), 0)
  return value


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pruning", PRUNINGS, ids=str)
def test_ensemble_target_and_kl_match_a_float64_reference(mode, pruning):
  logits, weights, temperature = (_logits(1), _logits(2, 4.0), _logits(3, 1.0)), (0.5, 0.3, 0.2), 2.0
  student = _logits(4)
  p64 = _reference_ensemble(logits, weights, mode, temperature)
  kept, want_target, want_other = _reference_pruned(p64, pruning) if pruning != Pruning() else (None, p64, None)
  got = targets.ensemble_target(
    logits, weights, mode, temperature, pruning.top_k or None, pruning.top_p or None, pruning.use_other_bucket
  )
  np.testing.assert_allclose(got.target_NxV, want_target, rtol=2e-5, atol=1e-7)
  if want_other is not None:
    np.testing.assert_allclose(got.other_mass_N, want_other, rtol=2e-5, atol=1e-7)
  chunk = EnsembleChunk(logits, weights, mode, ("a", "b", "c"), jnp.zeros(ROWS, jnp.int32), pruning, Divergence())
  value, mass_kept = chunk.divergence(student, temperature)
  np.testing.assert_allclose(value, _kl64(want_target, want_other, student, temperature, kept), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(mass_kept, (p64 * kept).sum(-1) if kept is not None else 1.0, rtol=2e-5)


@pytest.mark.parametrize("mode", MODES)
def test_ensemble_gradient_matches_a_float64_reference(mode):
  """d KL(ensemble || student) / d student logits = (q - target) / T for the full distributions."""
  logits, weights, temperature, student = (_logits(5), _logits(6)), (0.25, 0.75), 1.5, _logits(7)
  chunk = EnsembleChunk(logits, weights, mode, ("a", "b"), jnp.zeros(ROWS, jnp.int32), Pruning(), Divergence())
  grad = jax.grad(lambda s: jnp.sum(chunk.divergence(s, temperature)[0]))(student)
  want = (_softmax64(student, temperature) - _reference_ensemble(logits, weights, mode, temperature)) / temperature
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)


def _sums_and_grad(source, xs, shared, options):
  def total(hidden):
    sums = kd_chunk_sums({**xs, "hidden": hidden}, shared, options, source)
    return sums["total_loss_sum"], sums

  (_, sums), grad = jax.value_and_grad(total, has_aux=True)(xs["hidden"])
  return sums, grad


def _inputs(teacher_logits: dict):
  """Chunk inputs where hidden states are logits (identity unembeddings): the student's and each teacher's."""
  targets_N = jnp.asarray(np.random.default_rng(8).integers(0, VOCAB, ROWS), jnp.int32)
  xs = {"hidden": _logits(9), "targets": targets_N, "weights": jnp.ones(ROWS)}
  shared = {"w_DxV": jnp.eye(VOCAB), "alpha": jnp.float32(0.7), "temperature": jnp.float32(2.0)}
  for key, z in teacher_logits.items():
    xs[f"teacher_hidden{key}"], shared[f"teacher_w_DxV{key}"] = z, jnp.eye(VOCAB)
  return xs, shared


def _member(pruning, kind):
  return LiveTeacher(None, None, None, pruning, kind)  # chunk() needs neither a model nor shardings


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pruning", PRUNINGS[:3], ids=str)
@pytest.mark.parametrize("kind", [Divergence(), Divergence("jsd", 0.3)], ids=lambda d: d.name)
def test_one_teacher_of_weight_one_is_exactly_the_single_teacher_path(mode, pruning, kind):
  options = KDOptions(use_hard_labels=False, z_loss=0.0, temperature_is_one=False)
  xs, shared = _inputs({"": _logits(10), "@0": _logits(10)})
  single, single_grad = _sums_and_grad(_member(pruning, kind), xs, shared, options)
  ensemble = EnsembleTeacher((_member(pruning, kind),), (1.0,), mode, ("only",), pruning, kind)
  sums, grad = _sums_and_grad(ensemble, xs, shared, options)
  for key in ("total_loss_sum", "kd/soft_loss_sum", "kd/kl_div_at_T_sum", "kd/teacher_mass_kept_sum"):
    assert sums[key] == single[key], key  # bit for bit
  np.testing.assert_array_equal(grad, single_grad)
  np.testing.assert_allclose(sums["kd/teacher_loss_sum"], single["kd/teacher_loss_sum"], rtol=1e-6)
  np.testing.assert_allclose(sums["kd/only/teacher_loss_sum"], single["kd/teacher_loss_sum"], rtol=1e-6)
  np.testing.assert_allclose(sums["kd/only/kl_div_T1_sum"], single["kd/kl_div_T1_sum"], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_two_identical_teachers_equal_one_and_metrics_are_per_teacher(mode):
  pruning, kind = Pruning(top_p=0.8, use_other_bucket=True), Divergence()
  options = KDOptions(use_hard_labels=False, z_loss=0.0, temperature_is_one=False)
  teacher, other = _logits(11), _logits(12, 4.0)
  xs, shared = _inputs({"": teacher, "@0": teacher, "@1": teacher})
  single, single_grad = _sums_and_grad(_member(pruning, kind), xs, shared, options)
  twins = EnsembleTeacher((_member(pruning, kind),) * 2, (0.3, 0.7), mode, ("a", "b"), pruning, kind)
  sums, grad = _sums_and_grad(twins, xs, shared, options)
  for key in ("total_loss_sum", "kd/soft_loss_sum", "kd/teacher_mass_kept_sum", "kd/teacher_loss_sum"):
    np.testing.assert_allclose(sums[key], single[key], rtol=2e-6, err_msg=key)
  np.testing.assert_allclose(grad, single_grad, rtol=2e-5, atol=1e-7)
  xs, shared = _inputs({"@0": teacher, "@1": other})
  pair = EnsembleTeacher((_member(pruning, kind),) * 2, (0.5, 0.5), mode, ("a", "b"), pruning, kind)
  sums = kd_chunk_sums(xs, shared, options, pair)
  for name, z in (("a", teacher), ("b", other)):
    ce = -np.log(_softmax64(z, 1.0)[np.arange(ROWS), np.asarray(xs["targets"])]).sum()
    np.testing.assert_allclose(sums[f"kd/{name}/teacher_loss_sum"], ce, rtol=1e-5)
    q, p = _softmax64(xs["hidden"], 1.0), _softmax64(z, 1.0)
    np.testing.assert_allclose(sums[f"kd/{name}/kl_div_T1_sum"], (p * np.log(p / q)).sum(), rtol=1e-4)
  p_t1 = _reference_ensemble((teacher, other), (0.5, 0.5), mode, 1.0)
  want_ce = -np.log(p_t1[np.arange(ROWS), np.asarray(xs["targets"])]).sum()
  np.testing.assert_allclose(sums["kd/teacher_loss_sum"], want_ce, rtol=1e-5)


@pytest.mark.parametrize(("mode", "temperature"), [("logprobs", 2.0), ("logprobs", 1.0), ("probs", 1.0)])
def test_a_cache_of_the_ensemble_with_k_equal_vocab_is_the_live_ensemble(mode, temperature):
  logits, weights = (_logits(13), _logits(14, 4.0)), (0.6, 0.4)
  chunk = EnsembleChunk(logits, weights, mode, ("a", "b"), jnp.zeros(ROWS, jnp.int32), Pruning(), Divergence())
  values, ids, lse = targets.cache_fields(chunk.cache_logits(), VOCAB, (1.0, 2.0), jnp.float32)
  cached = targets.cached_target(values, ids, lse[:, 0 if temperature == 1.0 else 1], temperature, VOCAB)
  live = targets.ensemble_target(logits, weights, mode, temperature)
  np.testing.assert_allclose(cached.target_NxV, live.target_NxV, rtol=1e-5, atol=1e-8)
  student = _logits(15)
  np.testing.assert_allclose(
    divergence(student, cached, temperature, Divergence()),
    divergence(student, live, temperature, Divergence()),
    rtol=1e-5,
    atol=1e-7,
  )


# --- the keys ---

BASE = ["base.yml", "model_name=tiny", "use_kd=true"]


def test_kd_teachers_reads_a_yml_list_and_the_command_line_flow_form(tmp_path):
  yml = tmp_path / "ensemble.yml"
  yml.write_text(
    "base_config: base.yml\nuse_kd: true\nkd_ensemble: logprobs\nkd_teachers:\n"
    "  - {name: big, parameters_path: ckpt/a, overrides: {emb_dim: 64, num_decoder_layers: 3}, weight: 3}\n"
    "  - {parameters_path: ckpt/b, dtype: bfloat16}\n"
  )
  config = config_lib.load([str(yml), "model_name=tiny"])  # keys only: the folders are not read
  big, second = config.kd_teachers
  assert big == TeacherSpec("big", "ckpt/a", "", "emb_dim=64,num_decoder_layers=3", "", 3.0)
  assert second == TeacherSpec("teacher1", "ckpt/b", "", "", "bfloat16", 1.0)
  cli = config_lib.load([*BASE, "kd_teachers=[{parameters_path: ckpt/a, weight: 0.25}, {parameters_path: b}]"])
  assert [s.weight for s in cli.kd_teachers] == [0.25, 1.0] and hash(cli)


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    (["kd_teachers=[{weight: 1}]"], r"kd_teachers\[0\]\.parameters_path: every ensemble teacher needs"),
    (["kd_teachers=[{parameters_path: a, weight: 0}]"], r"kd_teachers\[0\]\.weight: expected a number > 0, got 0"),
    (["kd_teachers=[{parameters_path: a, wieght: 2}]"], r"kd_teachers\[0\]: unknown field 'wieght'"),
    (["kd_teachers=[{parameters_path: a, dtype: int4}]"], r"kd_teachers\[0\]\.dtype: expected one of"),
    (["kd_teachers=[{parameters_path: a}, {parameters_path: b, name: teacher0}]"], "the name 'teacher0' is used twice"),
    (["kd_teachers=ckpt/a"], "kd_teachers: expected a list of teachers"),
    (["kd_teachers=[{parameters_path: a}]", "kd_teacher_parameters_path=b"], "kd_teacher_parameters_path: cannot be"),
    (["kd_ensemble=logprobs"], "kd_ensemble: has no effect without kd_teachers"),
    (["kd_teachers=[{parameters_path: a}]", "kd_beta=0.5"], "kd_beta: feature distillation aligns with one teacher"),
    (["kd_teachers=[{parameters_path: a}]", "kd_offline_data_dir=c"], "kd_teachers: cannot be used with kd_offline"),
    (
      ["kd_teachers=[{parameters_path: a}, {parameters_path: b, overrides: 'vocab_size=300'}]"],
      r"kd_teachers\[1\]: teacher vocab_size 300 differs from the student's vocab_size 320",
    ),
    (["kd_teachers=[{parameters_path: a, overrides: {emb_dims: 3}}]"], r"unknown config key 'emb_dims' in kd_teachers"),
  ],
)
def test_kd_teachers_errors_name_the_entry_and_field(overrides, message):
  with pytest.raises(pyconfig.ConfigError, match=message):
    config_lib.load([*BASE, *overrides])


# --- end to end: train.py and the save job with an ensemble ---

WIDE = {"emb_dim": 64, "num_decoder_layers": 3}


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory):
  """Two different untrained architectures (tiny, and tiny widened and deepened), saved as checkpoints."""
  from flax import nnx

  from MaxText.model import decoder as model_lib
  from MaxText.model import params_io

  paths = []
  for name, keys, seed in (("narrow", {}, 7), ("wide", WIDE, 8)):
    path = str(tmp_path_factory.mktemp(name) / "ckpt")
    config = pyconfig.from_dict({"model_name": "tiny", "dtype": "float32", "init_std": 0.3, **keys})
    params_io.save_params(path, model_lib.split_params(model_lib.Decoder(config, nnx.Rngs(seed)))[1])
    paths.append(path)
  return paths


def _flow(entries) -> str:
  """kd_teachers in YAML's flow form, for the command line."""
  return "kd_teachers=[" + ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in e.items()) + "}" for e in entries) + "]"


def _pair(narrow, wide) -> str:
  overrides = "{" + ", ".join(f"{k}: {v}" for k, v in WIDE.items()) + "}"
  return _flow(
    [{"name": "narrow", "parameters_path": narrow}, {"name": "wide", "parameters_path": wide, "overrides": overrides}]
  )


@pytest.mark.slow
def test_train_with_one_listed_teacher_equals_the_single_teacher_run_and_logs_each_member(tmp_path, two_teachers):
  narrow, wide = two_teachers
  common = [*TINY, "steps=3", "learning_rate=3e-3", "use_kd=true", "kd_alpha=0.7", "kd_temperature=2.0", "kd_top_p=0.9"]
  run_train(tmp_path, *common, "run_name=single", f"kd_teacher_parameters_path={narrow}")
  run_train(tmp_path, *common, "run_name=listed", _flow([{"parameters_path": narrow, "weight": 2.5}]))
  single, listed = train_losses(tmp_path / "single"), train_losses(tmp_path / "listed")
  assert sorted(single) == sorted(listed) == [1, 2, 3]
  for step in single:
    assert listed[step] == single[step], step  # the same step, bit for bit

  proc = run_train(
    tmp_path, *common, "run_name=pair", _pair(narrow, wide), "kd_ensemble=logprobs", "eval_interval=3", "eval_steps=1"
  )
  assert "ensemble of 2 frozen teachers, kd_ensemble=logprobs" in proc.stdout
  records = read_metrics(tmp_path / "pair")
  last_train = [r for r in records if "kd/alpha" in r][-1]
  last_eval = [r for r in records if "eval/loss" in r][-1]
  for name in ("narrow", "wide"):
    for term in ("teacher_loss", "kl_div_T1"):
      assert np.isfinite(last_train[f"kd/{name}/{term}"]) and np.isfinite(last_eval[f"eval/kd/{name}/{term}"])
  # the two members are different models: their losses differ, and the ensemble's is neither
  assert last_train["kd/narrow/teacher_loss"] != last_train["kd/wide/teacher_loss"]
  # eval_only with the ensemble as the teacher reports the run's own eval fidelity at its last step
  student = f"load_parameters_path={tmp_path / 'pair' / 'checkpoints' / '3'}"
  scored = _eval_only_fidelity(tmp_path, student, _pair(narrow, wide), "kd_ensemble=logprobs", "eval_steps=1")
  for key, value in scored.items():
    assert value == pytest.approx(last_eval[f"eval/kd/{key}"], abs=1e-4), key  # printed to 4 decimals
  with open(tmp_path / "pair" / "config.json", encoding="utf-8") as f:
    saved = json.load(f)["kd_teachers"]
  assert [entry["name"] for entry in saved] == ["narrow", "wide"] and saved[1][
    "overrides"
  ] == "emb_dim=64,num_decoder_layers=3"


@pytest.mark.slow
def test_a_cache_made_from_an_ensemble_is_its_mixture_and_trains_a_student_offline(tmp_path, two_teachers):
  from MaxText import save_top_k_teacher_logits as save_job
  from MaxText.distill.teacher import load_live_teacher
  from MaxText.model import decoder as model_lib
  from MaxText.parallel import sharding
  from tests.test_offline_kd import _records

  narrow, wide = two_teachers
  keys = {"model_name": "tiny", "dtype": "float32", "max_target_length": 32, "per_device_batch_size": 4, "steps": 2}
  keys.update(use_kd=True, kd_offline_top_k=320, kd_offline_batches_per_shard=1)
  keys.update(kd_offline_format="float", kd_offline_logits_dtype="float32")  # compared with the mixture at 1e-4
  teachers = [{"name": "narrow", "parameters_path": narrow, "weight": 1}, {"parameters_path": wide, "overrides": WIDE}]
  config = pyconfig.from_dict({**keys, "kd_teachers": teachers, "kd_offline_output_dir": str(tmp_path / "cache")})
  manifest = save_job.save(config)
  assert manifest["ensemble"] == {"names": ["narrow", "teacher1"], "weights": [0.5, 0.5], "kd_ensemble": "probs"}
  assert manifest["teacher_checkpoint"] == [narrow, wide]

  # k = vocab: every id is cached, with the mixture's log-probs at T = 1 as values; recomputed member by member
  source, params = load_live_teacher(config, sharding.create_mesh(config))
  first = _records(str(tmp_path / "cache"))[1][0]
  tokens = [np.asarray(first[k])[None] for k in ("inputs", "inputs_position", "inputs_segmentation")]
  members = [
    np.asarray(model_lib.bind(member.graphdef, member_params).logits(*tokens))[0]
    for member, member_params in zip(source.members, params, strict=True)
  ]
  mixture = 0.5 * _softmax64(members[0], 1.0) + 0.5 * _softmax64(members[1], 1.0)
  ids, values = np.asarray(first["teacher_ids"]), np.asarray(first["teacher_values"])
  np.testing.assert_allclose(values, np.log(np.take_along_axis(mixture, ids, -1)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(first["teacher_lse"][0], 0.0, atol=1e-5)  # they are normalised log-probs

  offline = [*TINY, "run_name=offline", "steps=2", "use_kd=true", f"kd_offline_data_dir={tmp_path / 'cache'}"]
  proc = run_train(tmp_path, *offline)
  assert "OFFLINE from the teacher cache" in proc.stdout
