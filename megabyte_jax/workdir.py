"""The work directory of a run: its resolved config, checkpoints and metrics.

    DIR/config.json      the full resolved experiment config (written by training)
    DIR/checkpoints/     Orbax checkpoints, one directory per saved step
    DIR/metrics.jsonl    one JSON object per logged step
    DIR/tb/              TensorBoard event files

Later commands (`evaluate`, resumed training) need only `--workdir=DIR`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import flax.linen as nn
import ml_collections

from megabyte_jax.checkpoint import Checkpointer
from megabyte_jax.config import LEGACY_MEGABYTE_DEFAULTS, LEGACY_TRANSFORMER_DEFAULTS
from megabyte_jax.errors import CheckpointError, ConfigError
from megabyte_jax.models import build_model
from megabyte_jax.train_state import abstract_train_state, make_optimizer

CONFIG_FILE = "config.json"


def config_path(workdir: str) -> str:
  """Path of the resolved config inside `workdir`."""
  return os.path.join(workdir, CONFIG_FILE)


def save_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes `config` as JSON to `DIR/config.json` (atomically); returns the path."""
  os.makedirs(workdir, exist_ok=True)
  path = config_path(workdir)
  text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)   # readers see the old file or the new one, never a part
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads `DIR/config.json` back into a ConfigDict.

  JSON has no tuples: the model section's arrays (`patch_sizes`, `conv_kernel_sizes`, ...,
  tuples in `MegabyteConfig`) come back as tuples, so the config equals the one saved.
  Fields the saved config lacks because it predates them take their values of then
  (`_fill_legacy_fields`), not today's defaults.

  Raises:
    ConfigError: when the file is missing or is not valid JSON.
  """
  path = config_path(workdir)
  if not os.path.exists(path):
    raise ConfigError(f"no {CONFIG_FILE} in {workdir!r}: not a training directory "
                      f"(train into it first, or pass --config)")
  try:
    with open(path, encoding="utf-8") as f:
      values = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read {path}: {e}") from e
  if isinstance(values.get("model"), dict):
    values["model"] = {k: tuple(v) if isinstance(v, list) else v
                       for k, v in values["model"].items()}
    _fill_legacy_fields(values)
  return ml_collections.ConfigDict(values)


def _fill_legacy_fields(values: dict) -> None:
  """Gives a config saved before a field existed that field's value of then, so the run
  resumes, evaluates and samples as the model it trained: the MEGABYTE formulation and
  embedding init of before 2026-12 (`config.LEGACY_MEGABYTE_DEFAULTS`, the paper's) and
  weight decay on every parameter of 2 or more dimensions (`train.weight_decay_mask`
  "ndim", which also fixes the optimizer state's structure)."""
  legacy = (LEGACY_MEGABYTE_DEFAULTS if values["model"].get("kind") == "megabyte"
            else LEGACY_TRANSFORMER_DEFAULTS)
  for key, value in legacy.items():
    values["model"].setdefault(key, value)
  if isinstance(values.get("train"), dict):
    values["train"].setdefault("weight_decay_mask", "ndim")


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
  """Keys (dotted) whose values differ between two nested dicts."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for key in sorted(set(a) | set(b)):
      out += _diff(a.get(key), b.get(key), f"{prefix}.{key}")
    return out
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):   # JSON has no tuples
    a, b = list(a), list(b)
  return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


# Model fields that change how the model computes, not what its checkpoints hold: a resumed
# run may change them (e.g. turn on rematerialization to fit a bigger batch).
RUNTIME_MODEL_FIELDS = ("remat", "attention_impl", "dtype", "dropout", "embed_dropout")


def _checkpoint_fields(model_section: ml_collections.ConfigDict) -> dict:
  """A model section with defaults filled in and the runtime-only fields dropped."""
  _, model_cfg = build_model(model_section)
  values = dict(model_cfg.to_dict(), kind=model_section.kind)
  return {k: v for k, v in values.items() if k not in RUNTIME_MODEL_FIELDS}


def resolve_config(workdir: str, config: Optional[ml_collections.ConfigDict]
                   ) -> ml_collections.ConfigDict:
  """The config a training run in `workdir` should use.

  With no `config`, the one saved in `workdir` (resuming a run needs only `--workdir`).
  With a `config` and a saved one, the model section must match (the checkpoints hold that
  model) except for `RUNTIME_MODEL_FIELDS`; other sections may change, e.g. more
  `train.steps` to extend a finished run, or another mesh.

  Raises:
    ConfigError: no config anywhere, or a model that differs from the saved run's.
  """
  if config is None:
    return load_config(workdir)
  if os.path.exists(config_path(workdir)):
    saved = load_config(workdir)
    changed = _diff(_checkpoint_fields(saved.model), _checkpoint_fields(config.model), "model")
    if changed:
      raise ConfigError(
          f"{workdir!r} holds a run of a different model ({'; '.join(changed)}); use a new "
          f"--workdir, or drop --config to resume the saved run")
  return config


def load_trained(workdir: str, step: Optional[int] = None
                 ) -> tuple[ml_collections.ConfigDict, nn.Module, Any, int]:
  """Loads a trained model from a work directory.

  Returns:
    `(config, model, params, step)`: the saved config, the flax module, its parameters at
    `step` (default: the latest checkpoint) and that step.

  Raises:
    ConfigError: no config in `workdir`. CheckpointError: no or unreadable checkpoint.
  """
  config = load_config(workdir)
  model, model_cfg = build_model(config.model)
  checkpointer = Checkpointer(workdir, save_every=1, keep=None)
  try:
    if checkpointer.latest_step() is None:
      raise CheckpointError(f"no checkpoint in {checkpointer.directory}: has training run?")
    step = checkpointer.latest_step() if step is None else step
    abstract = abstract_train_state(model, model_cfg.seq_len, make_optimizer(config.train))
    state = checkpointer.restore(abstract, step)
  finally:
    checkpointer.close()
  return config, model, state.params, int(step)
