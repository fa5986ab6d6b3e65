"""Which teacher a run distills from, chosen in this one place: none, a live model, an ensemble, or a cache."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from MaxText.config.saved_files import run_dir
from MaxText.config.teachers import TeacherSpec, normalized_weights
from MaxText.config.views import kd_vocab, teacher_config, teacher_is_int8
from MaxText.data.teacher_cache import CacheView
from MaxText.data.token_alignment import cached_mapping
from MaxText.data.tokenizer import build_tokenizer
from MaxText.distill.cached_source import CachedTopKTeacher
from MaxText.distill.cross_tokenizer import CrossTokenizerTeacher
from MaxText.distill.ensemble import EnsembleTeacher
from MaxText.distill.sources import LiveTeacher, Pruning, TeacherSource
from MaxText.losses.divergence_family import Divergence
from MaxText.model import decoder, int8_weights
from MaxText.model.params_io import load_params
from MaxText.parallel.sharding import logical_shardings


def _float_layout(config, mesh, spec: TeacherSpec | None):
  """(teacher Config, graphdef, abstract parameters, their shardings) as the checkpoint holds them."""
  model_config = teacher_config(config, spec)
  graphdef, abstract_params, logical_axes = decoder.split_params(decoder.abstract_model(model_config))
  return model_config, graphdef, abstract_params, logical_shardings(logical_axes, abstract_params, mesh)


def live_teacher(config, mesh, spec: TeacherSpec | None = None) -> tuple[LiveTeacher, object]:
  """A teacher source and its abstract parameters (shapes, dtypes, shardings on the student's mesh): an
  int8 teacher's matmul weights are Int8Weights (model/int8_weights.py).

  `spec` None: the single kd_teacher_* teacher (or the student itself when self-distilling)."""
  model_config, graphdef, abstract_params, shardings = _float_layout(config, mesh, spec)
  if teacher_is_int8(config, spec):
    abstract_params, shardings = int8_weights.abstract_params(abstract_params), int8_weights.shardings(shardings)
  vocab = kd_vocab(config) if kd_vocab(config) < model_config.vocab_size else None
  kind = Divergence.from_config(config)
  return LiveTeacher(model_config, graphdef, shardings, Pruning.from_config(config), kind, vocab), abstract_params


def _as_held(config, mesh, spec: TeacherSpec | None, read) -> object:
  """A teacher's parameters as the step holds them: `read(abstract, shardings)` reads them as saved; an int8
  teacher is read in bfloat16 (half the peak of float32) and quantized on the devices, in its shardings."""
  _, _, abstract_params, shardings = _float_layout(config, mesh, spec)
  if not teacher_is_int8(config, spec):
    return read(abstract_params, shardings)
  as_bf16 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), abstract_params)
  quantize = jax.jit(int8_weights.quantize_params, out_shardings=int8_weights.shardings(shardings), donate_argnums=0)
  return quantize(read(as_bf16, shardings))


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
  source, _ = abstract_teacher(config, mesh)
  if config.kd_teachers:
    members = [
      _as_held(config, mesh, spec, functools.partial(load_params, spec.parameters_path)) for spec in config.kd_teachers
    ]
    return source, tuple(members)
  if config.kd_teacher_parameters_path:
    read = functools.partial(load_params, config.kd_teacher_parameters_path)
  elif config.load_parameters_path:  # self-distillation from the loaded starting point
    read = functools.partial(load_params, config.load_parameters_path)
  else:  # self-distillation: the student's initial parameters are a pure function of the seed, so a resumed run
    read = lambda abstract, shardings: decoder.init_params(config, shardings)  # rebuilds exactly the same teacher
  return source, _as_held(config, mesh, None, read)


def cached_teacher(config, lse_index: int | None) -> CachedTopKTeacher:
  """The cached top-k teacher of offline KD (no file read: the cache's fields ride in the batch)."""
  kind = Divergence.from_config(config)
  return CachedTopKTeacher(config.kd_offline_normalization, kd_vocab(config), lse_index, kind)


def cross_tokenizer_teacher(config, mesh) -> tuple[CrossTokenizerTeacher, object]:
  """A teacher with its own tokenizer (kd_teacher_tokenizer_path), and its abstract parameters; the map
  between the two vocabularies is built once per tokenizer pair and kept in the run's folder."""
  model_config, graphdef, abstract_params, shardings = _float_layout(config, mesh, None)
  if teacher_is_int8(config):
    abstract_params, shardings = int8_weights.abstract_params(abstract_params), int8_weights.shardings(shardings)
  student_tokenizer = build_tokenizer("huggingface", config.tokenizer_path)
  teacher_tokenizer = build_tokenizer("huggingface", config.kd_teacher_tokenizer_path)
  vocabs = (config.vocab_size, model_config.vocab_size)
  maps = cached_mapping(student_tokenizer, teacher_tokenizer, vocabs, run_dir(config))
  source = CrossTokenizerTeacher(
    model_config,
    graphdef,
    shardings,
    maps["student_to_teacher"],
    maps["teacher_to_student"],
    config.kd_cross_tokenizer_loss,
    config.kd_gold_exact_weight,
    config.kd_gold_uld_weight,
    config.loss_chunk_size,
  )
  return source, abstract_params


def build_teacher(config, mesh, cache: CacheView | None) -> tuple[TeacherSource | None, object]:
  """(source, the state the step is given for it): (None, None) for a plain run."""
  if not config.use_kd:
    return None, None
  if config.kd_offline_data_dir:
    return cached_teacher(config, cache.lse_index), None
  if config.kd_teacher_tokenizer_path:
    source, _ = cross_tokenizer_teacher(config, mesh)
    return source, _as_held(config, mesh, None, functools.partial(load_params, config.kd_teacher_parameters_path))
  return load_live_teacher(config, mesh)
