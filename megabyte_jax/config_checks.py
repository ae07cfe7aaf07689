"""Checks of a whole experiment config, run before training writes anything.

`check_config(config)` refuses, with one `ConfigError` line naming the field, every value
that would crash later or train nonsense silently: any number that is not finite or does
not fit its type on the device (a float beyond float32, `learning_rate=1e300`; an integer
beyond int32, `seed` beyond `MAX_SEED`), non-finite or out-of-range optimizer settings
(`learning_rate=nan`, `b2=1.5`), counts below 1 (`grad_accum_steps=0`, `max_bad_steps=0`),
a warmup as long as the run, negative seeds and data-pipeline sizes, batches and chunks
that cannot be held (`check_sizes`), a sample at the end that would run for hours or
cannot be encoded (`check_sample`), sharding rule overrides (`mesh_rules`) naming unknown
mesh axes. The model section is checked by building it (`megabyte_jax.models.build_model`)
and counting its parameters (at most `MAX_PARAMS`).

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
from typing import Any, Iterator, Optional, Sequence

import jax
import ml_collections
import numpy as np

from megabyte_jax import sharding as sharding_lib
from megabyte_jax.errors import ConfigError
from megabyte_jax.models import build_model

# `train.weight_decay_mask`: which parameters weight decay applies to (`train_state.decay_mask`).
DECAY_MASKS = ("kernels", "kernels_embeddings", "ndim")

INT_MAX = 2 ** 31 - 1              # counts and sizes reach jitted code as int32
FLOAT_MAX = float(np.finfo(np.float32).max)   # settings reach jitted code as float32
MAX_SEED = 2 ** 62                 # seeds: non-negative, with room for `seed + 2`
# Elements of one array that the input pipeline or evaluation builds (int32 indexing).
MAX_ARRAY_ELEMENTS = 2 ** 31 - 1
# The sample at the end of training reruns the model over a window for every byte.
MAX_SAMPLE_BYTES = 2 ** 16
MAX_PARAMS = 10 ** 12             # a model beyond this is a typo, not a run
SEED_FIELDS = ("seed", "data.split_seed")


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


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
  """`(dotted name, value)` of every leaf of a config (list and tuple items as NAME[i])."""
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    for key in node.keys():
      yield from _leaves(node[key], f"{prefix}.{key}" if prefix else str(key))
  elif isinstance(node, (list, tuple)):
    for i, item in enumerate(node):
      yield from _leaves(item, f"{prefix}[{i}]")
  else:
    yield prefix, node


def check_numbers(config: ml_collections.ConfigDict) -> None:
  """Every number of `config`: a float must be finite and fit float32, an integer int32
  (a seed of `SEED_FIELDS`: 0..`MAX_SEED`).

  Raises:
    ConfigError: naming the first field that does not.
  """
  for name, value in _leaves(config, ""):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
      continue
    if name in SEED_FIELDS:
      check_seed(name, value)
    elif isinstance(value, (float, np.floating)):
      if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
      if abs(value) > FLOAT_MAX:
        raise ConfigError(f"{name} must be at most {FLOAT_MAX:.4g} in size (it is a float32 "
                          f"on the device), got {value:g}")
    elif not -INT_MAX - 1 <= value <= INT_MAX:
      raise ConfigError(f"{name} must be at most {INT_MAX:,} in size (an int32 on the "
                        f"device), got {value}")


def check_seed(name: str, value: Any) -> int:
  """A seed: an integer in 0..`MAX_SEED`; returns it."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ConfigError(f"{name} must be an integer, got {value!r}")
  if not 0 <= value <= MAX_SEED:
    raise ConfigError(f"{name} must be in 0..{MAX_SEED} (2**62), got {value}")
  return int(value)


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
  """The `data` section's values (the files themselves are checked when read); the options
  of the image and audio sources are checked whatever the source, so that a saved config
  holds no value that cannot be used."""
  for name in ("read_threads", "prefetch", "workers"):
    if name in d:
      _integer("data", name, d[name], 0)
  if "chunk_bytes" in d:
    _integer("data", "chunk_bytes", d.chunk_bytes, 1)
  if not 0 <= _number("data", "eval_fraction", d.eval_fraction) < 1:
    raise ConfigError(f"data.eval_fraction must be in [0, 1), got {d.eval_fraction}")
  check_seed("data.split_seed", d.get("split_seed", 0))
  if d.get("separator") is not None:
    separator = _integer("data", "separator", d.separator, -1)
    if separator > 255:
      raise ConfigError(f"data.separator must be a byte 0..255, or -1 or None for none, got "
                        f"{separator}")
  if "image_size" in d:
    _integer("data", "image_size", d.image_size, 1)
  if "channels" in d and (isinstance(d.channels, bool) or d.channels not in (1, 3)):
    raise ConfigError(f"data.channels must be 3 (RGB) or 1 (grayscale), got {d.channels!r}")
  for name in ("patch_size", "sample_rate"):
    if d.get(name) is not None:
      _integer("data", name, d[name], 1)


def check_batch_bytes(field: str, rows: int, seq_len: int) -> None:
  """A batch of `rows` windows of `seq_len` bytes (the setting `field`) must hold at most
  `MAX_ARRAY_ELEMENTS` bytes.

  Raises:
    ConfigError: naming the field, the size and the limit.
  """
  if rows * seq_len > MAX_ARRAY_ELEMENTS:
    raise ConfigError(f"{field}={rows:,} windows of {seq_len} bytes make a batch of "
                      f"{rows * seq_len:,} bytes, more than {MAX_ARRAY_ELEMENTS:,} (arrays "
                      f"are indexed with int32)")


def check_sizes(config: ml_collections.ConfigDict, seq_len: int) -> None:
  """The arrays that the config makes the run build must be possible: a training batch (a
  host's share) or an evaluation batch of at most `MAX_ARRAY_ELEMENTS` bytes; and the input
  pipeline (its chunks, of `data.chunk_bytes` or one batch, held `data.prefetch` + 3 times
  per worker) and an evaluation batch (8 bytes per window byte) within the memory
  evaluation may take (`local_files.eval_memory_limit`, half of this machine's).

  Raises:
    ConfigError: naming the field, the size and the limit.
  """
  from megabyte_jax.data.local_files import EVAL_BYTES_PER_BYTE, eval_memory_limit  # pylint: disable=g-import-not-at-top
  t, d = config.train, config.data
  host_rows = max(1, t.batch_size // jax.process_count())   # each host packs its share
  check_batch_bytes("train.batch_size", host_rows, seq_len)
  check_batch_bytes("eval.batch_size", config.eval.batch_size, seq_len)
  limit = eval_memory_limit()
  allowed = f"more than the {limit / 2**30:.1f} GiB allowed (half of this machine's memory)"
  chunk = max(int(d.get("chunk_bytes", 2 ** 24)), host_rows * seq_len)
  held = chunk * (int(d.get("prefetch", 4)) + 3) * max(1, int(d.get("workers", 0)))
  if held > limit:
    raise ConfigError(f"the input pipeline would hold about {held / 2**30:.1f} GiB (chunks of "
                      f"{chunk:,} bytes: data.chunk_bytes or one batch, data.prefetch + 3 of "
                      f"them per data.workers), {allowed}")
  need = config.eval.batch_size * seq_len * EVAL_BYTES_PER_BYTE
  if need > limit:
    raise ConfigError(f"eval.batch_size={config.eval.batch_size:,} needs about "
                      f"{need / 2**30:.1f} GiB, {allowed}")


def check_sample(s: ml_collections.ConfigDict) -> None:
  """The `sample` section: the continuation printed at the end of training (at most
  `MAX_SAMPLE_BYTES`; the sample command makes longer ones), its options (those of
  `sampling.check_sampling_options`) and a prompt that is UTF-8 text."""
  num_bytes = _integer("sample", "num_bytes", s.num_bytes, 0)
  if num_bytes > MAX_SAMPLE_BYTES:
    raise ConfigError(
        f"sample.num_bytes must be at most {MAX_SAMPLE_BYTES:,} (the sample at the end of "
        f"training runs the model once per byte), got {num_bytes:,}; sample longer texts "
        f"from the trained run with megabyte-sample --num_bytes=N")
  if _number("sample", "temperature", s.temperature) < 0:
    raise ConfigError(f"sample.temperature must be >= 0, got {s.temperature}")
  if s.get("top_k") is not None and _integer("sample", "top_k", s.top_k, 1) > 256:
    raise ConfigError(f"sample.top_k must be in 1..256 (or None), got {s.top_k}")
  prompt = s.get("prompt", "")
  if not isinstance(prompt, str):
    raise ConfigError(f"sample.prompt must be text, got {prompt!r}")
  try:
    prompt.encode("utf-8")
  except UnicodeEncodeError as e:
    raise ConfigError(f"sample.prompt is not UTF-8 text ({e.reason} at character {e.start}: "
                      f"{prompt[e.start]!r}); set --config.sample.prompt to UTF-8 text") from None


def check_model_size(model_cfg: Any) -> int:
  """The model's parameter count, at most `MAX_PARAMS`; returns it.

  Raises:
    ConfigError: naming the count, for a model beyond it (sizes that are a typo).
  """
  from megabyte_jax.flops import model_cost  # pylint: disable=g-import-not-at-top
  params = model_cost(model_cfg).params
  if params > MAX_PARAMS:
    raise ConfigError(f"the model section describes {params:.3g} parameters, more than the "
                      f"{MAX_PARAMS:.0e} a run can hold; check its sizes (model.*_dim, "
                      f"model.*_layers, model.seq_len)")
  return params


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
  check_numbers(config)
  check_seed("seed", config.get("seed", 0))
  _, model_cfg = build_model(config.model)   # raises ConfigError naming a bad model field
  check_model_size(model_cfg)
  check_train(config.train)
  check_data(config.data)
  check_mesh_rules(config.get("mesh_rules"))
  _integer("eval", "batch_size", config.eval.batch_size, 1)
  check_sample(config.sample)
  check_sizes(config, model_cfg.seq_len)
