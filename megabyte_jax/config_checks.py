"""Checks of a whole experiment config, run before training writes anything.

`check_config(config)` refuses, with one `ConfigError` line naming the field, every value
that would crash later or train nonsense silently: non-finite or out-of-range optimizer
settings (`learning_rate=nan`, `b2=1.5`), counts below 1 (`grad_accum_steps=0`,
`max_bad_steps=0`), a warmup as long as the run, negative data-pipeline sizes, sharding
rule overrides (`mesh_rules`) naming unknown mesh axes. The model section is checked by
building it (`megabyte_jax.models.build_model`).

The checks that need the device mesh take it as an argument: `check_batch` (the batch
against the hosts, the mesh's data axes and the gradient-accumulation microbatches). The
one training setup (`megabyte_jax.training.setup.TrainSetup.create`) runs both; the
library functions that read a single setting (`train_state.learning_rate_schedule`,
`train_state.make_optimizer`, `train_step.make_train_step`) call the check of that setting
from here, so every training-config check lives in this module.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

import jax
import ml_collections

from megabyte_jax import sharding as sharding_lib
from megabyte_jax.errors import ConfigError
from megabyte_jax.models import build_model

# `train.weight_decay_mask`: which parameters weight decay applies to (`train_state.decay_mask`).
DECAY_MASKS = ("kernels", "kernels_embeddings", "ndim")


def _number(section: str, name: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(f"{section}.{name} must be a number, got {value!r}")
  if not math.isfinite(value):
    raise ConfigError(f"{section}.{name} must be a finite number, got {value}")
  return float(value)


def _integer(section: str, name: str, value: Any, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    raise ConfigError(f"{section}.{name} must be an integer, got {value!r}")
  if value < low:
    what = "positive" if low == 1 else f">= {low}"
    raise ConfigError(f"{section}.{name} must be {what}, got {value}")
  return value


def check_decay_mask(rule: Any) -> str:
  """`train.weight_decay_mask`: one of `DECAY_MASKS`; returns it."""
  if rule not in DECAY_MASKS:
    raise ConfigError(f"train.weight_decay_mask must be one of {DECAY_MASKS}, got {rule!r}")
  return rule


def check_z_loss(value: Any) -> float:
  """`train.z_loss`: a finite weight >= 0 (0: off); returns it."""
  value = _number("train", "z_loss", value)
  if value < 0:
    raise ConfigError(f"train.z_loss must be >= 0 (0 disables), got {value}")
  return value


def check_lr_scales(rules: Any) -> tuple[tuple[str, float], ...]:
  """`train.lr_scales`: `(pattern, factor)` pairs, each pattern a valid regular expression
  (matched at the start of a parameter's path) and each factor a finite number >= 0;
  returns them as a tuple of pairs."""
  if isinstance(rules, (str, bytes)) or not isinstance(rules, (tuple, list)):
    raise ConfigError(f"train.lr_scales must be a tuple of (pattern, factor) pairs, got "
                      f"{rules!r}")
  out = []
  for rule in rules:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
      raise ConfigError(f"train.lr_scales: each entry must be a (pattern, factor) pair, got "
                        f"{rule!r}")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise ConfigError(f"train.lr_scales: {rule[0]!r} is not a regular expression: {e}"
                        ) from None
    factor = _number("train", f"lr_scales[{rule[0]!r}]", rule[1])
    if factor < 0:
      raise ConfigError(f"train.lr_scales: the factor of {rule[0]!r} must be >= 0, got "
                        f"{factor}")
    out.append((rule[0], factor))
  return tuple(out)


def check_grad_accum_steps(value: Any) -> int:
  """`train.grad_accum_steps`: a positive integer (microbatches per update); returns it."""
  return _integer("train", "grad_accum_steps", value, 1)


def check_microbatches(batch: int, grad_accum_steps: int) -> None:
  """A batch of `batch` rows must split into `grad_accum_steps` equal microbatches."""
  if batch % grad_accum_steps:
    raise ConfigError(f"the batch of {batch} rows cannot be split into "
                      f"train.grad_accum_steps={grad_accum_steps} equal microbatches")


def check_schedule(t: ml_collections.ConfigDict) -> None:
  """The settings of the learning-rate schedule (`train_state.learning_rate_schedule`):
  positive steps and peak rate, a warmup within the run, a final ratio in [0, 1]. A whole
  training config is held to more (`check_train`: a warmup shorter than the run)."""
  steps, warmup = int(t.steps), int(t.warmup_steps)
  if steps <= 0:
    raise ConfigError(f"train.steps must be positive, got {steps}")
  if not 0 <= warmup <= steps:
    raise ConfigError(f"train.warmup_steps must be in 0..train.steps ({steps}), got {warmup}")
  if t.learning_rate <= 0:
    raise ConfigError(f"train.learning_rate must be positive, got {t.learning_rate}")
  if not 0 <= t.min_lr_ratio <= 1:
    raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")


def check_optimizer(t: ml_collections.ConfigDict) -> None:
  """The optimizer's own settings (`train_state.make_optimizer`): gradient clipping and
  the weight-decay mask (the schedule's are `check_schedule`)."""
  if t.grad_clip < 0:
    raise ConfigError(f"train.grad_clip must be >= 0 (0 disables), got {t.grad_clip}")
  check_decay_mask(t.get("weight_decay_mask", "kernels"))
  check_lr_scales(t.get("lr_scales", ()))


def check_train(t: ml_collections.ConfigDict) -> None:
  """The `train` section."""
  for name in ("steps", "batch_size", "log_every", "keep_checkpoints", "checkpoint_every",
               "grad_accum_steps", "max_bad_steps"):
    if name in t:
      _integer("train", name, t[name], 1)
  for name in ("eval_every", "eval_batches", "warmup_steps"):
    _integer("train", name, t[name], 0)
  if t.warmup_steps >= t.steps:
    raise ConfigError(f"train.warmup_steps must be less than train.steps ({t.steps}), got "
                      f"{t.warmup_steps} (the learning rate would never decay)")
  if _number("train", "learning_rate", t.learning_rate) <= 0:
    raise ConfigError(f"train.learning_rate must be positive, got {t.learning_rate}")
  if not 0 <= _number("train", "min_lr_ratio", t.min_lr_ratio) <= 1:
    raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
  for name in ("b1", "b2"):
    if not 0 <= _number("train", name, t[name]) < 1:
      raise ConfigError(f"train.{name} must be in [0, 1), got {t[name]}")
  if _number("train", "eps", t.eps) <= 0:
    raise ConfigError(f"train.eps must be positive, got {t.eps}")
  for name in ("weight_decay", "grad_clip"):
    if _number("train", name, t[name]) < 0:
      raise ConfigError(f"train.{name} must be >= 0, got {t[name]}")
  check_z_loss(t.get("z_loss", 0.0))
  check_schedule(t)
  check_optimizer(t)


def check_data(d: ml_collections.ConfigDict) -> None:
  """The `data` section's sizes (the files themselves are checked when read)."""
  for name in ("read_threads", "prefetch", "workers"):
    if name in d:
      _integer("data", name, d[name], 0)
  if "chunk_bytes" in d:
    _integer("data", "chunk_bytes", d.chunk_bytes, 1)
  if not 0 <= _number("data", "eval_fraction", d.eval_fraction) < 1:
    raise ConfigError(f"data.eval_fraction must be in [0, 1), got {d.eval_fraction}")


def check_mesh_rules(overrides: Optional[Sequence[Any]]) -> sharding_lib.Rules:
  """`config.mesh_rules`: `(logical_name, mesh_axis_or_None)` pairs over the default
  `sharding.LOGICAL_RULES`; returns the rules in force (`sharding.logical_rules`).

  Raises:
    ConfigError: an entry that is not such a pair, or an unknown mesh axis.
  """
  if overrides is not None and (isinstance(overrides, (str, bytes))
                                or not isinstance(overrides, (tuple, list))):
    raise ConfigError(f"mesh_rules must be a list of (logical_name, mesh_axis) pairs, got "
                      f"{overrides!r}")
  return sharding_lib.logical_rules(overrides)


def check_batch(t: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                rules: Optional[Sequence[tuple[str, Any]]] = None,
                process_count: Optional[int] = None) -> int:
  """The training batch against the hosts and the device mesh; returns
  `train.grad_accum_steps`.

  `train.batch_size` must split evenly over the `process_count` hosts (default: this run's,
  `jax.process_count()`), over the mesh axes the batch is split on (`activation_batch`
  under `rules`, default `sharding.LOGICAL_RULES`: data x fsdp), and into
  `train.grad_accum_steps` microbatches that each split over those axes too.

  Raises:
    ConfigError: naming the batch size and what it must divide into.
  """
  rules = sharding_lib.LOGICAL_RULES if rules is None else rules
  hosts = jax.process_count() if process_count is None else process_count
  batch = _integer("train", "batch_size", t.batch_size, 1)
  grad_accum = check_grad_accum_steps(t.get("grad_accum_steps", 1))
  axes = sharding_lib.batch_sharding(mesh, rules).spec[0]
  axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
  shards = math.prod(mesh.shape[axis] for axis in axes)
  what = f"the mesh's {' x '.join(axes) or 'batch'} size ({shards}"
  if batch % hosts:
    raise ConfigError(f"train.batch_size={batch} must be a multiple of the number of hosts "
                      f"({hosts})")
  if batch % shards:
    raise ConfigError(f"train.batch_size={batch} must be a multiple of {what}, mesh "
                      f"{dict(mesh.shape)})")
  if batch % grad_accum or (batch // grad_accum) % shards:
    raise ConfigError(f"train.batch_size={batch} must split into "
                      f"train.grad_accum_steps={grad_accum} microbatches that are each a "
                      f"multiple of {what})")
  return grad_accum


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks every section a training run reads; raises one-line `ConfigError`s. The
  checks that need the device mesh are `check_batch`."""
  for section in ("model", "data", "train", "eval", "sample"):
    if section not in config:
      raise ConfigError(f"the config has no {section!r} section")
  build_model(config.model)   # raises ConfigError naming a bad model field
  check_train(config.train)
  check_data(config.data)
  check_mesh_rules(config.get("mesh_rules"))
  _integer("eval", "batch_size", config.eval.batch_size, 1)
  _integer("sample", "num_bytes", config.sample.num_bytes, 0)
  if _number("sample", "temperature", config.sample.temperature) < 0:
    raise ConfigError(f"sample.temperature must be >= 0, got {config.sample.temperature}")
  if config.sample.get("top_k") is not None:
    _integer("sample", "top_k", config.sample.top_k, 1)
