"""Checks of a whole experiment config, run before training writes anything.

`check_config(config)` refuses, with one `ConfigError` line naming the field, every value
that would crash later or train nonsense silently: non-finite or out-of-range optimizer
settings (`learning_rate=nan`, `b2=1.5`), counts below 1 (`grad_accum_steps=0`,
`max_bad_steps=0`), a warmup as long as the run, negative data-pipeline sizes. The model
section is checked by building it (`megabyte_jax.models.build_model`).
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from megabyte_jax.errors import ConfigError
from megabyte_jax.models import build_model
from megabyte_jax.training.train_state import DECAY_MASKS


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
  mask = t.get("weight_decay_mask", "kernels")
  if mask not in DECAY_MASKS:
    raise ConfigError(f"train.weight_decay_mask must be one of {DECAY_MASKS}, got {mask!r}")


def check_data(d: ml_collections.ConfigDict) -> None:
  """The `data` section's sizes (the files themselves are checked when read)."""
  for name in ("read_threads", "prefetch", "workers"):
    if name in d:
      _integer("data", name, d[name], 0)
  if "chunk_bytes" in d:
    _integer("data", "chunk_bytes", d.chunk_bytes, 1)
  if not 0 <= _number("data", "eval_fraction", d.eval_fraction) < 1:
    raise ConfigError(f"data.eval_fraction must be in [0, 1), got {d.eval_fraction}")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks every section a training run reads; raises one-line `ConfigError`s."""
  for section in ("model", "data", "train", "eval", "sample"):
    if section not in config:
      raise ConfigError(f"the config has no {section!r} section")
  build_model(config.model)   # raises ConfigError naming a bad model field
  check_train(config.train)
  check_data(config.data)
  _integer("eval", "batch_size", config.eval.batch_size, 1)
  _integer("sample", "num_bytes", config.sample.num_bytes, 0)
  if _number("sample", "temperature", config.sample.temperature) < 0:
    raise ConfigError(f"sample.temperature must be >= 0, got {config.sample.temperature}")
  if config.sample.get("top_k") is not None:
    _integer("sample", "top_k", config.sample.top_k, 1)
