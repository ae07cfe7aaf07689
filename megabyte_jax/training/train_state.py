"""The training state (step, parameters, optimizer state) and the optimizer that updates it."""

from __future__ import annotations

import functools
import re
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from megabyte_jax import config_checks
from megabyte_jax import sharding as sharding_lib
from megabyte_jax.config_checks import DECAY_MASKS  # pylint: disable=unused-import  (re-export)


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes; a pytree, so it jits and checkpoints.

  Attributes:
    step: int32 scalar, the number of updates applied.
    params: the model parameters (plain arrays; logical axis names are recovered from the
      model with `nn.get_partition_spec` when sharding needs them).
    opt_state: the optax state of `make_optimizer(...)`.
  """

  step: jax.Array
  params: Any
  opt_state: Any


def learning_rate_schedule(train_cfg) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, cosine decay to `min_lr_ratio` of it at `steps`."""
  config_checks.check_schedule(train_cfg)
  steps, warmup = int(train_cfg.steps), int(train_cfg.warmup_steps)
  peak = float(train_cfg.learning_rate)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(steps, 1),
      end_value=peak * float(train_cfg.min_lr_ratio))


# Names of the weights of dense layers: `qkv_kernel`, `out_kernel`, `in_kernel`, the head's
# and the convolutions' `kernel`, and the projections between levels (`global_to_local`,
# `global_to_level_1`, ...).
_PROJECTION = re.compile(r"^(global|level_\d+)_to_(level_\d+|local)$")


def decay_role(name: str) -> str:
  """The role of a parameter, from its name, for weight decay: "kernel" (a dense layer's
  weight matrix), "embedding" (a byte embedding table or a learned position table) or
  "other" (biases, norm scales and biases, pads)."""
  if name.endswith("kernel") or _PROJECTION.match(name):
    return "kernel"
  if name in ("embedding", "pos") or name.endswith("_pos"):
    return "embedding"
  return "other"


def decay_mask(params: Any, rule: str = "kernels") -> Any:
  """True for the parameters weight decay applies to (`train.weight_decay_mask`).

  "kernels" (the default) chooses by role (`decay_role`), not by shape: the weight matrices
  of dense layers. "kernels_embeddings" adds the byte embedding and position tables. Never
  biases, norm parameters or pads, whatever their shape. "ndim" is the rule before
  2026-12 (every parameter of 2 or more dimensions), kept for comparisons: it also decays
  the QKV bias (`[3, heads, head_dim]`) and the MLP's input bias (`[1, mlp]`), and with
  `scan_layers` (a leading layer axis) every norm and bias.
  """
  config_checks.check_decay_mask(rule)
  if rule == "ndim":
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)

  def mask(path, _):
    role = decay_role(str(getattr(path[-1], "key", path[-1])))
    return role == "kernel" or (rule == "kernels_embeddings" and role == "embedding")
  return jax.tree_util.tree_map_with_path(mask, params)


def param_path(path: Any) -> str:
  """A parameter's tree path as `name/name/...` (e.g. `local_model/block_0/attn/qkv_kernel`)."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def lr_scale(path: str, rules: Any) -> float:
  """The learning-rate factor of the parameter at `path` under `train.lr_scales` rules
  (`(pattern, factor)` pairs): the factor of the first pattern that matches at the start
  of the path (`re.match`), else 1."""
  for pattern, factor in rules:
    if re.match(pattern, path):
      return float(factor)
  return 1.0


def scale_by_lr_rules(rules: Any) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its `lr_scale` factor: after AdamW this is a
  per-group learning rate (the step and the decoupled weight decay both scale)."""
  rules = config_checks.check_lr_scales(rules)

  def update(updates, state, params=None):
    del params
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, u: u * lr_scale(param_path(path), rules), updates)
    return scaled, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay on the parameters `decay_mask` selects by
  `train.weight_decay_mask`) with global-norm clipping, the schedule and the per-parameter
  learning-rate factors of `train.lr_scales` (none by default)."""
  config_checks.check_optimizer(train_cfg)
  rule = train_cfg.get("weight_decay_mask", "kernels")
  parts = [optax.clip_by_global_norm(train_cfg.grad_clip)] if train_cfg.grad_clip else []
  parts.append(optax.adamw(learning_rate_schedule(train_cfg), b1=train_cfg.b1,
                           b2=train_cfg.b2, eps=train_cfg.eps,
                           weight_decay=train_cfg.weight_decay,
                           mask=functools.partial(decay_mask, rule=rule)))
  lr_rules = train_cfg.get("lr_scales", ())
  if lr_rules:
    parts.append(scale_by_lr_rules(lr_rules))
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


def boxed_abstract_params(model: nn.Module, seq_len: int) -> Any:
  """Shapes and dtypes of the parameters, still boxed with their logical axis names."""
  return jax.eval_shape(
      lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32)),
      jax.random.key(0))["params"]


def state_shardings(model: nn.Module, seq_len: int, optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, rules: Any = None) -> TrainState:
  """`NamedSharding`s for every array of the `TrainState` on `mesh`.

  Parameters follow the logical-axis rules (`megabyte_jax.sharding.LOGICAL_RULES` unless
  `rules` is given); the optimizer's per-parameter statistics (Adam's moments) are sharded
  like their parameters; the step and other scalars are replicated.
  """
  rules = sharding_lib.LOGICAL_RULES if rules is None else rules
  boxed = boxed_abstract_params(model, seq_len)
  params = sharding_lib.param_shardings(boxed, mesh, rules)
  abstract_opt = jax.eval_shape(optimizer.init, nn.meta.unbox(boxed))
  replicated = sharding_lib.replicated(mesh)
  opt_state = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, params,
                                    transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=params, opt_state=opt_state)


def init_params(model: nn.Module, seq_len: int, rng: jax.Array) -> Any:
  """Initializes `model` on a `[1, seq_len]` dummy batch; returns plain (unboxed) params."""
  variables = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))
  return nn.meta.unbox(variables["params"])


def create_train_state(model: nn.Module, seq_len: int, optimizer: optax.GradientTransformation,
                       rng: jax.Array, shardings: Optional[TrainState] = None) -> TrainState:
  """A fresh `TrainState` at step 0, built in one jitted computation; with `shardings`
  (`state_shardings(...)`) every array is created directly in its shards."""

  def create(rng):
    params = init_params(model, seq_len, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))

  return jax.jit(create, out_shardings=shardings)(rng)


def abstract_train_state(model: nn.Module, seq_len: int,
                         optimizer: optax.GradientTransformation,
                         shardings: Optional[TrainState] = None) -> TrainState:
  """The shapes and dtypes of `create_train_state(...)`, without allocating it (for restore);
  with `shardings`, each leaf also carries its target sharding, so a checkpoint restores
  straight into that layout (whatever mesh wrote it)."""
  shapes = jax.eval_shape(
      lambda rng: create_train_state(model, seq_len, optimizer, rng), jax.random.key(0))
  if shardings is None:
    return shapes
  return jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
