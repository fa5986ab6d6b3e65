"""Which teacher a run distills from, chosen in this one place: none, a live model, an ensemble, or a cache."""

from __future__ import annotations

from MaxText.config.teachers import TeacherSpec, normalized_weights
from MaxText.config.views import kd_vocab, teacher_config
from MaxText.data.teacher_cache import CacheView
from MaxText.distill.cached_source import CachedTopKTeacher
from MaxText.distill.ensemble import EnsembleTeacher
from MaxText.distill.sources import LiveTeacher, Pruning, TeacherSource
from MaxText.losses.divergence_family import Divergence
from MaxText.model import decoder
from MaxText.model.params_io import load_params
from MaxText.parallel.sharding import logical_shardings


def live_teacher(config, mesh, spec: TeacherSpec | None = None) -> tuple[LiveTeacher, object]:
  """A teacher source and its abstract parameters (shapes, dtypes, shardings on the student's mesh).

  `spec` None: the single kd_teacher_* teacher (or the student itself when self-distilling)."""
  model_config = teacher_config(config, spec)
  graphdef, abstract_params, logical_axes = decoder.split_params(decoder.abstract_model(model_config))
  shardings = logical_shardings(logical_axes, abstract_params, mesh)
  vocab = kd_vocab(config) if kd_vocab(config) < model_config.vocab_size else None
  kind = Divergence.from_config(config)
  return LiveTeacher(model_config, graphdef, shardings, Pruning.from_config(config), kind, vocab), abstract_params


def abstract_teacher(config, mesh) -> tuple[LiveTeacher | EnsembleTeacher, object]:
  """The live source of a run (one teacher or the kd_teachers ensemble) and its abstract state."""
  if not config.kd_teachers:
    return live_teacher(config, mesh)
  members, abstract = zip(*(live_teacher(config, mesh, spec) for spec in config.kd_teachers), strict=True)
  names = tuple(spec.name for spec in config.kd_teachers)
  source = EnsembleTeacher(
    members,
    normalized_weights(config.kd_teachers),
    config.kd_ensemble,
    names,
    Pruning.from_config(config),
    Divergence.from_config(config),
  )
  return source, tuple(abstract)


def load_live_teacher(config, mesh) -> tuple[LiveTeacher | EnsembleTeacher, object]:
  """The frozen teacher(s) and parameters, sharded on the student's mesh (parameters only, read-only)."""
  source, abstract_params = abstract_teacher(config, mesh)
  shardings = source.param_shardings
  if config.kd_teachers:
    paths = [spec.parameters_path for spec in config.kd_teachers]
    return source, tuple(load_params(*args) for args in zip(paths, abstract_params, shardings, strict=True))
  if config.kd_teacher_parameters_path:
    params = load_params(config.kd_teacher_parameters_path, abstract_params, shardings)
  elif config.load_parameters_path:  # self-distillation from the loaded starting point
    params = load_params(config.load_parameters_path, abstract_params, shardings)
  else:  # self-distillation: the student's initial parameters are a pure function of the seed, so a resumed run
    params = decoder.init_params(config, shardings)  # rebuilds exactly the same teacher
  return source, params


def cached_teacher(config, lse_index: int | None) -> CachedTopKTeacher:
  """The cached top-k teacher of offline KD (no file read: the cache's fields ride in the batch)."""
  kind = Divergence.from_config(config)
  return CachedTopKTeacher(config.kd_offline_normalization, kd_vocab(config), lse_index, kind)


def build_teacher(config, mesh, cache: CacheView | None) -> tuple[TeacherSource | None, object]:
  """(source, the state the step is given for it): (None, None) for a plain run."""
  if not config.use_kd:
    return None, None
  if config.kd_offline_data_dir:
    return cached_teacher(config, cache.lse_index), None
  return load_live_teacher(config, mesh)
