"""The training state (step, parameters, optimizer state): its layout, shardings and initialisation."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from MaxText import model as model_lib
from MaxText import sharding
from MaxText.optimizers import create_optimizer


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """Everything jit needs to know about the state, derived from the parameter declarations."""

  graphdef: Any
  logical_axes: Any
  tx: optax.GradientTransformation
  param_shardings: Any
  state_shardings: Any
  abstract_state: Any


def _replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def make_layout(config, mesh: Mesh, rules=sharding.DEFAULT_RULES) -> StateLayout:
  graphdef, abstract_params, logical_axes = model_lib.split_params(model_lib.abstract_model(config))
  tx = create_optimizer(config, logical_axes)
  param_shardings = sharding.logical_shardings(logical_axes, abstract_params, mesh, rules)
  abstract_state = jax.eval_shape(lambda p: new_state(p, tx), abstract_params)
  opt_shardings = optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract_state["opt_state"],
    param_shardings,
    transform_non_params=lambda _: _replicated(mesh),
    is_leaf=lambda x: isinstance(x, NamedSharding),
  )
  state_shardings = {"step": _replicated(mesh), "params": param_shardings, "opt_state": opt_shardings}
  return StateLayout(graphdef, logical_axes, tx, param_shardings, state_shardings, abstract_state)


def new_state(params, tx: optax.GradientTransformation) -> dict:
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def init_params(config, layout: StateLayout):
  """Freshly initialised parameters, created directly in their shardings."""

  def init():
    return model_lib.split_params(model_lib.Decoder(config, nnx.Rngs(config.seed)))[1]

  return jax.jit(init, out_shardings=layout.param_shardings)()


def init_state(config, layout: StateLayout, params=None) -> dict:
  """A step-0 state over `params` (fresh ones when None), sharded by the layout."""
  if params is None:
    params = init_params(config, layout)
  make = jax.jit(
    lambda p: new_state(p, layout.tx), in_shardings=(layout.param_shardings,), out_shardings=layout.state_shardings
  )
  return make(params)
