"""The one training setup: everything a run builds from its config before the first step.

    setup = TrainSetup.create(config)              # checks, model, mesh, optimizer, steps
    state = setup.init_state()                     # a fresh TrainState, in its shards
    state, metrics = setup.train_step(state, setup.shard_batch(local_rows))

`megabyte_jax.train` (through `training.loop.train_and_evaluate`), `fresh_training`
and the benchmarks (`experiments/bench/train_throughput.py`, `profile_step.py`) all build
their model, mesh, optimizer, learning-rate schedule, state shardings and jitted steps here,
so a benchmark times exactly the step that training runs. The checks of the config, and
those that need the mesh (the batch against the hosts, the mesh's data axes and the
gradient-accumulation microbatches), run here once, from `megabyte_jax.config_checks`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from megabyte_jax import config_checks
from megabyte_jax import sharding as sharding_lib
from megabyte_jax.inference import scoring
from megabyte_jax.models import build_model
from megabyte_jax.training import train_state as state_lib
from megabyte_jax.training.train_step import make_train_step, mesh_context


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """A training run's model, mesh, optimizer and jitted steps, built from its config.

  Attributes:
    config: the experiment config it was built from.
    seed: the base seed (parameters, dropout); `config.seed` unless given.
    model: the flax module. model_cfg: its `MegabyteConfig` / `TransformerConfig`.
    mesh: the device mesh (`config.mesh`).
    rules: the logical-axis rules in force: `sharding.LOGICAL_RULES` with
      `config.mesh_rules` applied.
    optimizer: AdamW with clipping (`train_state.make_optimizer`).
    schedule: the learning-rate schedule the optimizer follows (logged as `lr`).
    state_sharding: the `NamedSharding` of every array of the `TrainState`.
    batch_sharding: the sharding of a global `[batch, T]` batch.
    grad_accum: microbatches per update (`train.grad_accum_steps`).
    dropout: whether the model has dropout (the step then draws masks).
    train_step: jitted `(state, tokens [batch, T]) -> (state, metrics)`, donating `state`.
    eval_step: jitted `(params, tokens, mask) -> (sum of nats, scored bytes)`.
  """

  config: ml_collections.ConfigDict
  seed: int
  model: nn.Module
  model_cfg: Any
  mesh: jax.sharding.Mesh
  rules: sharding_lib.Rules
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  state_sharding: state_lib.TrainState
  batch_sharding: jax.sharding.NamedSharding
  grad_accum: int
  dropout: bool
  train_step: Callable
  eval_step: Callable

  @classmethod
  def create(cls, config: ml_collections.ConfigDict,
             seed: Optional[int] = None) -> "TrainSetup":
    """Checks `config` and builds its setup; allocates no training state.

    Args:
      config: a whole experiment config (`experiment.base_config`).
      seed: the base seed; default `config.seed`.

    Raises:
      ConfigError: any bad setting (`config_checks.check_config`), a mesh that does not
        fit the devices or the model, or a batch that does not split over the hosts, the
        mesh's data axes or the gradient-accumulation microbatches (`check_batch`).
    """
    rules, model, model_cfg, mesh, grad_accum = check_setup(config)
    seed = int(config.get("seed", 0) if seed is None else seed)
    optimizer = state_lib.make_optimizer(config.train)
    schedule = state_lib.learning_rate_schedule(config.train)
    state_sharding = state_lib.state_shardings(model, model_cfg.seq_len, optimizer, mesh,
                                               rules)
    dropout = model_cfg.dropout > 0 or model_cfg.embed_dropout > 0
    train_step = make_train_step(model, optimizer, seed, dropout, schedule,
                                 grad_accum_steps=grad_accum,
                                 z_loss=float(config.train.get("z_loss", 0.0)), mesh=mesh,
                                 state_sharding=state_sharding, rules=rules)
    return cls(config=config, seed=seed, model=model, model_cfg=model_cfg, mesh=mesh,
               rules=rules, optimizer=optimizer, schedule=schedule,
               state_sharding=state_sharding,
               batch_sharding=sharding_lib.batch_sharding(mesh, rules),
               grad_accum=grad_accum, dropout=dropout, train_step=train_step,
               eval_step=scoring.make_eval_step(model))

  def context(self):
    """A context with this setup's mesh current and its logical-axis rules in force (for
    evaluation, and anything else that applies the model outside `train_step`)."""
    return mesh_context(self.mesh, self.rules)

  def init_state(self, rng: Optional[jax.Array] = None) -> state_lib.TrainState:
    """A fresh `TrainState` at step 0, created directly in its shards (default key:
    `jax.random.key(seed)`, as a new run)."""
    rng = jax.random.key(self.seed) if rng is None else rng
    with self.context():
      return state_lib.create_train_state(self.model, self.model_cfg.seq_len, self.optimizer,
                                          rng, self.state_sharding)

  def abstract_state(self) -> state_lib.TrainState:
    """Shapes, dtypes and target shardings of the `TrainState`, allocating nothing (to
    restore a checkpoint straight into this mesh's layout)."""
    return state_lib.abstract_train_state(self.model, self.model_cfg.seq_len, self.optimizer,
                                          self.state_sharding)

  def shard_batch(self, local_batch: np.ndarray) -> jax.Array:
    """The global `[batch, T]` batch from this host's rows `[batch / hosts, T]`."""
    return sharding_lib.shard_batch(local_batch, self.batch_sharding)


class Checked(NamedTuple):
  """What `check_setup` builds on the way: the rules, the model, its config, the mesh and
  the microbatches per update."""
  rules: sharding_lib.Rules
  model: nn.Module
  model_cfg: Any
  mesh: jax.sharding.Mesh
  grad_accum: int


def check_setup(config: ml_collections.ConfigDict) -> Checked:
  """Every check of `TrainSetup.create`, building nothing but the model's module and the
  mesh (no parameter shapes are traced): the config (`config_checks.check_config`), the
  sharding rules, the mesh against the devices and the model, the batch against the mesh.

  Raises:
    ConfigError: the first problem, in one line.
  """
  config_checks.check_config(config)
  rules = config_checks.check_mesh_rules(config.get("mesh_rules"))
  model, model_cfg = build_model(config.model)
  mesh = sharding_lib.make_mesh(config.get("mesh"))
  sharding_lib.check_model_fits_mesh(model_cfg, mesh)
  grad_accum = config_checks.check_batch(config.train, mesh, rules)
  return Checked(rules, model, model_cfg, mesh, grad_accum)


class Training(NamedTuple):
  """A model built from an experiment config, with a fresh sharded state and its step."""
  model: nn.Module
  model_cfg: Any
  mesh: jax.sharding.Mesh
  state: state_lib.TrainState
  step: Callable


def fresh_training(config: Any, seed: Optional[int] = None) -> Training:
  """`config`'s model, mesh, a freshly initialized `TrainState` in its shards and the
  jitted train step: a thin view of `TrainSetup.create(config, seed)`, the one setup
  `megabyte_jax.train` runs (its learning-rate schedule, gradient accumulation, sharding
  rules and batch checks). `seed` defaults to `config.seed`.

  Raises:
    ConfigError: a bad config, or a mesh that does not fit the devices, the model or the
      batch.
  """
  setup = TrainSetup.create(config, seed)
  return Training(setup.model, setup.model_cfg, setup.mesh, setup.init_state(),
                  setup.train_step)
