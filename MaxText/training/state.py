"""The training state: step, the student's trainable collections and the optimizer state; its layout,
shardings and initialisation.

The trainable collections are `params` (the decoder) and, for feature KD with a projection, `kd_head`.
The optimizer state mirrors the decoder's parameters alone when there is no head, so plain and
logit-KD runs keep the checkpoint layout they always had.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from MaxText.config.views import FeatureAlignment
from MaxText.distill import feature_head
from MaxText.model import decoder
from MaxText.parallel import sharding
from MaxText.training.optimizers import create_optimizer

HEAD = "kd_head"


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """Everything jit needs to know about the state, derived from the parameter declarations."""

  graphdef: Any
  tx: optax.GradientTransformation
  param_shardings: Any  # the decoder's
  state_shardings: Any
  abstract_state: Any
  alignment: FeatureAlignment | None  # feature KD; with a projection shape the state has a head


def trainables(state: dict) -> dict:
  """The collections the optimizer updates: {"params": ..., "kd_head": ... (feature KD only)}."""
  return {key: state[key] for key in ("params", HEAD) if key in state}


def optimized(tree: dict):
  """The tree the optimizer state mirrors: the decoder's parameters alone, or both collections."""
  return tree if HEAD in tree else tree["params"]


def from_optimized(tree, with_head: bool) -> dict:
  return tree if with_head else {"params": tree}


def _replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _has_head(alignment: FeatureAlignment | None) -> bool:
  return alignment is not None and alignment.projection_shape is not None


def make_layout(config, mesh: Mesh, alignment: FeatureAlignment | None, rules=sharding.DEFAULT_RULES) -> StateLayout:
  graphdef, abstract_params, logical_axes = decoder.split_params(decoder.abstract_model(config))
  abstract, axes = {"params": abstract_params}, {"params": logical_axes}
  if _has_head(alignment):
    abstract[HEAD] = feature_head.abstract_head(alignment, config.weight_dtype)
    axes[HEAD] = feature_head.head_logical_axes()
  shardings = sharding.logical_shardings(axes, abstract, mesh, rules)
  tx = create_optimizer(config, optimized(axes))
  abstract_state = jax.eval_shape(lambda t: new_state(t, tx), abstract)
  opt_shardings = optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract_state["opt_state"],
    optimized(shardings),
    transform_non_params=lambda _: _replicated(mesh),
    is_leaf=lambda x: isinstance(x, NamedSharding),
  )
  state_shardings = {"step": _replicated(mesh), **shardings, "opt_state": opt_shardings}
  return StateLayout(graphdef, tx, shardings["params"], state_shardings, abstract_state, alignment)


def new_state(trainable: dict, tx: optax.GradientTransformation) -> dict:
  return {"step": jnp.zeros((), jnp.int32), **trainable, "opt_state": tx.init(optimized(trainable))}


def init_state(config, layout: StateLayout, params=None) -> dict:
  """A step-0 state over `params` (fresh ones when None) and a fresh feature head, sharded by the layout."""
  trainable = {"params": decoder.init_params(config, layout.param_shardings) if params is None else params}
  if HEAD in layout.state_shardings:
    init = lambda: feature_head.init_head(layout.alignment, config.seed, config.weight_dtype)
    trainable[HEAD] = jax.jit(init, out_shardings=layout.state_shardings[HEAD])()
  shardings = {key: layout.state_shardings[key] for key in trainable}
  make = jax.jit(lambda t: new_state(t, layout.tx), in_shardings=(shardings,), out_shardings=layout.state_shardings)
  return make(trainable)
