"""The work directory of a run: its resolved config, checkpoints and metrics.

    DIR/config.json      the full resolved experiment config (written by training; each
                         checkpoint keeps a copy, in checkpoints/STEP/config/metadata)
    DIR/data.json        what the data was (files, sizes, times, digests), checked on resume
    DIR/checkpoints/     Orbax checkpoints, one directory per saved step
    DIR/metrics.jsonl    one JSON object per logged step
    DIR/result.json      the record of the last finished training invocation
    DIR/train.lock       held by the running trainer
    DIR/tb/              TensorBoard event files

Later commands (`evaluate`, resumed training) need only `--workdir=DIR`.

A work directory may be local or remote: every path goes through `etils.epath`, so
`gs://BUCKET/run`, `s3://...` (with gcsfs / s3fs installed) and local paths all work.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

from etils import epath
import ml_collections

from megabyte_jax.data import identity as identity_lib
from megabyte_jax.training.checkpoint import (CHECKPOINT_SUBDIR, CONFIG_COPY, LIST_ATTEMPTS,
                                              CheckpointAccessError, Checkpointer,
                                              CheckpointVanished)
from megabyte_jax.config import LEGACY_MEGABYTE_DEFAULTS, LEGACY_TRANSFORMER_DEFAULTS
from megabyte_jax.errors import CheckpointError, ConfigError, DataError
from megabyte_jax.loaded import TRAINED_ORDER, LoadedModel
from megabyte_jax.models import build_model
from megabyte_jax.training.train_state import abstract_train_state, make_optimizer

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"


PathLike = Union[str, os.PathLike]


def is_remote(path: PathLike) -> bool:
  """Whether `path` is a URI (`gs://...`, `s3://...`) rather than a local path."""
  return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path` (a local path with `~` expanded)."""
  path = os.fspath(path)
  return epath.Path(path if is_remote(path) else os.path.expanduser(path))


def check_workdir(workdir: PathLike) -> None:
  """Refuses a `--workdir` that exists but is not a directory, or whose absolute path is
  not UTF-8 (Orbax and TensorStore cannot write checkpoints there: a run would train and
  then fail at every save).

  Raises:
    ConfigError: naming it.
  """
  name = os.fspath(workdir)
  full = name if is_remote(name) else os.path.abspath(os.path.expanduser(name))
  try:
    full.encode("utf-8")
  except UnicodeEncodeError:
    shown = os.fsencode(full).decode("utf-8", "backslashreplace")
    raise ConfigError(f"--workdir {shown} is not UTF-8: checkpoints cannot be written to a "
                      f"path of other bytes; use a UTF-8 name") from None
  path = as_path(workdir)
  try:
    if path.exists() and not path.is_dir():
      raise ConfigError(f"--workdir {os.fspath(workdir)} is a file, not a directory; give a "
                        f"directory (it is created when missing)")
  except OSError as e:
    raise ConfigError(f"cannot use --workdir {os.fspath(workdir)}: {e.strerror or e}") from e


def config_path(workdir: PathLike) -> str:
  """Path of the resolved config inside `workdir`."""
  return os.fspath(as_path(workdir) / CONFIG_FILE)


def save_config(workdir: PathLike, config: ml_collections.ConfigDict) -> str:
  """Writes `config` as JSON to `DIR/config.json` (atomically: `write_text_atomic`);
  returns the path."""
  as_path(workdir).mkdir(parents=True, exist_ok=True)
  path = config_path(workdir)
  write_text_atomic(path, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
  return path


def write_text_atomic(path: PathLike, text: str) -> None:
  """Writes `text` to `path` (local or remote) so that readers see the old file or the new
  one, never a part: locally through a temporary file and a rename; remotely as one object
  upload (object stores replace an object whole)."""
  path = os.fspath(path)
  if is_remote(path):
    epath.Path(path).write_text(text, encoding="utf-8")
    return
  path = os.path.expanduser(path)
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


def data_path(workdir: PathLike) -> str:
  """Path of the data's identity record inside `workdir`."""
  return os.fspath(as_path(workdir) / DATA_FILE)


def save_data_identity(workdir: PathLike, identity: dict) -> str:
  """Writes the data's identity (`ByteData.identity`) to `DIR/data.json`, atomically;
  returns the path."""
  path = data_path(workdir)
  write_text_atomic(path, json.dumps(identity, sort_keys=True) + "\n")
  return path


def check_data_identity(workdir: PathLike, identity: Optional[dict],
                        allow_change: bool = False) -> Optional[str]:
  """Compares the data a resumed run reads now (`identity`) with `DIR/data.json`.

  Returns None when they agree, or when there is nothing to compare (no record, as for a
  run from before it was kept, or no identity); with `allow_change`, a one-line warning
  naming what changed.

  Raises:
    DataError: naming what changed (the first few changes, validation first), unless
      `allow_change`.
  """
  try:
    saved = json.loads(as_path(data_path(workdir)).read_text(encoding="utf-8"))
  except (OSError, ValueError):   # none yet, or damaged: recorded again
    return None
  if identity is None or not isinstance(saved, dict):
    return None
  found = identity_lib.changes(saved, identity)
  if not found:
    return None
  what = identity_lib.describe(found)
  validation = identity_lib.validation_changed(found)
  if not allow_change:
    raise DataError(
        f"the data of {os.fspath(workdir)!r} changed since it was recorded: {what}; restore "
        f"it, or pass --allow_data_change to train on the data as it is now"
        + (" (eval_bpb then does not compare across the change)" if validation else ""))
  return (f"the data changed since it was recorded: {what}; training goes on with it "
          f"(--allow_data_change)"
          + ("; the validation set changed, so eval_bpb does not compare across this point"
             if validation else ""))


def load_config(workdir: PathLike) -> ml_collections.ConfigDict:
  """Reads `DIR/config.json` back into a ConfigDict.

  JSON has no tuples: the model section's arrays (`patch_sizes`, `conv_kernel_sizes`, ...,
  tuples in `MegabyteConfig`) come back as tuples, so the config equals the one saved.
  Fields the saved config lacks because it predates them take their values of then
  (`_fill_legacy_fields`), not today's defaults.

  Raises:
    ConfigError: when the file is missing or is not valid JSON (naming, when a checkpoint
      keeps a copy of the config, the command that recovers it).
  """
  check_workdir(workdir)
  path = config_path(workdir)
  if not epath.Path(path).exists():
    copy = checkpoint_config_copy(workdir)
    if copy is not None:
      raise ConfigError(f"no {CONFIG_FILE} in {os.fspath(workdir)!r}, which holds checkpoints; "
                        f"each checkpoint keeps the run's config: recover it with "
                        f"cp {copy} {path}")
    raise ConfigError(f"no {CONFIG_FILE} in {os.fspath(workdir)!r}: not a training directory "
                      f"(train into it first: megabyte-train --config=NAME --workdir=DIR)")
  try:
    return load_config_file(path)
  except ConfigError as e:
    copy = checkpoint_config_copy(workdir)
    if copy is None:
      raise
    raise ConfigError(f"{e}; each checkpoint keeps the run's config: recover it with "
                      f"cp {copy} {path}") from e


def checkpoint_config_copy(workdir: PathLike) -> Optional[str]:
  """The path of the config kept in the newest checkpoint of `workdir` that has one
  (`checkpoints/STEP/config/metadata`), or None."""
  directory = as_path(workdir) / CHECKPOINT_SUBDIR
  try:
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()),
                   reverse=True)
    for step in steps:
      copy = directory / str(step) / CONFIG_COPY
      if copy.exists():
        return os.fspath(copy)
  except OSError:
    pass
  return None


def load_config_file(path: PathLike) -> ml_collections.ConfigDict:
  """Reads a saved `config.json` (any path) into a ConfigDict; see `load_config`.

  Raises:
    ConfigError: when the file is missing or is not valid JSON.
  """
  try:
    values = json.loads(as_path(path).read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read {os.fspath(path)}: {e}") from e
  if not isinstance(values, dict):
    raise ConfigError(f"{os.fspath(path)} does not hold a config (a JSON object)")
  return config_from_json_values(values)


def config_from_json_values(values: dict) -> ml_collections.ConfigDict:
  """A config from the JSON values of a saved one (`config.json`, or the config inside a
  parameters export): the model section's arrays, `mesh_rules` and `train.lr_scales` back
  as tuples, and the
  fields a config saved before them lacks filled in (`_fill_legacy_fields`)."""
  values = dict(values)
  if isinstance(values.get("model"), dict):
    values["model"] = {k: tuple(v) if isinstance(v, list) else v
                       for k, v in values["model"].items()}
    _fill_legacy_fields(values)
  if "mesh" in values:   # a run saved before `mesh_rules` existed: the defaults, overridable
    values.setdefault("mesh_rules", [])
  if isinstance(values.get("mesh_rules"), list):   # JSON has no tuples: back to pairs
    values["mesh_rules"] = _pairs(values["mesh_rules"])
  train = values.get("train")
  if isinstance(train, dict) and isinstance(train.get("lr_scales"), list):
    values["train"] = {**train, "lr_scales": _pairs(train["lr_scales"])}
  return ml_collections.ConfigDict(values)


def _pairs(rules: list) -> tuple:
  """JSON lists of rules (`[[name, value], ...]`) back to the tuples of pairs saved."""
  return tuple(tuple(tuple(v) if isinstance(v, list) else v for v in rule)
               if isinstance(rule, list) else rule for rule in rules)


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
RUNTIME_MODEL_FIELDS = ("remat", "attention_impl", "dtype", "dropout", "embed_dropout",
                        "fp8")


def _checkpoint_fields(model_section: ml_collections.ConfigDict) -> dict:
  """A model section with defaults filled in and the runtime-only fields dropped."""
  _, model_cfg = build_model(model_section)
  values = dict(model_cfg.to_dict(), kind=model_section.kind)
  return {k: v for k, v in values.items() if k not in RUNTIME_MODEL_FIELDS}


# Data fields that change how fast the input pipeline reads, not which bytes it yields.
RUNTIME_DATA_FIELDS = ("read_threads", "prefetch")


def _data_fields(data_section: ml_collections.ConfigDict) -> dict:
  return {k: v for k, v in data_section.to_dict().items() if k not in RUNTIME_DATA_FIELDS}


def resolve_config(workdir: PathLike, config: Optional[ml_collections.ConfigDict],
                   allow_data_change: bool = False) -> ml_collections.ConfigDict:
  """The config a training run in `workdir` should use.

  With no `config`, the one saved in `workdir` (resuming a run needs only `--workdir`; the
  command line applies `--config.x=` overrides on top of it). With a `config` and a saved
  one, the model section must match (the checkpoints hold that model) except for
  `RUNTIME_MODEL_FIELDS`, and so must the data section (a resumed run would silently train
  and validate on other bytes) except for `RUNTIME_DATA_FIELDS`, unless
  `allow_data_change` (and so must the batch size and the seed, which decide the order of
  the batches: `check_data_order`, which training runs after the config's own checks);
  other fields may change, e.g. more `train.steps` to extend a finished run, or another
  mesh.

  Raises:
    ConfigError: no config anywhere, or a model that differs from the saved run's.
    DataError: a data section that differs from the saved run's (without
      `allow_data_change`).
  """
  check_workdir(workdir)
  if config is None:
    return load_config(workdir)
  if epath.Path(config_path(workdir)).exists():
    saved = load_config(workdir)
  else:   # none, or config.json lost: then the checkpoints' copy holds the run's model
    copy = checkpoint_config_copy(workdir)
    saved = None if copy is None else load_config_file(copy)
  if saved is not None:
    changed = _diff(_checkpoint_fields(saved.model), _checkpoint_fields(config.model), "model")
    if changed:
      raise ConfigError(
          f"{os.fspath(workdir)!r} holds a run of a different model ({'; '.join(changed)}); "
          f"use a new --workdir, or drop --config to resume the saved run")
    if "data" in saved and "data" in config and not allow_data_change:
      changed = _diff(_data_fields(saved.data), _data_fields(config.data), "data")
      if changed:
        raise DataError(
            f"{os.fspath(workdir)!r} was trained on other data ({'; '.join(changed)}); drop "
            f"--config to continue the saved run (overrides such as --config.train.steps=N "
            f"apply to it), or pass --allow_data_change to train on the new data")
  return config


# Fields outside the data section that decide which bytes each step trains on: the batches
# are packed and shuffled by them, so a resume that changes one leaves the data order of an
# uninterrupted run.
DATA_ORDER_FIELDS = ("train.batch_size", "seed")


def check_data_order(workdir: PathLike, config: ml_collections.ConfigDict,
                     allow_data_change: bool = False) -> None:
  """Refuses to resume the run saved in `workdir` with a `config` that changes
  `DATA_ORDER_FIELDS` (the batch size or the seed): it would train on other batches than
  an uninterrupted run. Nothing to check without a saved run, or with `allow_data_change`.
  Training runs it once the config itself is checked (`setup.TrainSetup.create`), so a
  batch that cannot fit the mesh is named as such first.

  Raises:
    DataError: naming the fields and their saved and new values.
  """
  if allow_data_change or not epath.Path(config_path(workdir)).exists():
    return
  saved = load_config(workdir)
  changed = []
  for field in DATA_ORDER_FIELDS:
    old, new = _field(saved, field), _field(config, field)
    if old is not None and new is not None and old != new:
      changed.append(f"{field}: {old!r} -> {new!r}")
  if changed:
    raise DataError(
        f"{os.fspath(workdir)!r} was trained with {'; '.join(changed)}: its batches from here "
        f"on would not be those of an uninterrupted run; keep the saved value, or pass "
        f"--allow_data_change to go on with the new one")


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  value = config
  for key in dotted.split("."):
    if not hasattr(value, "get"):
      return None
    value = value.get(key)
  return value


def load_trained(workdir: PathLike, step: Optional[int] = None) -> LoadedModel:
  """Loads a trained model from a work directory (local or remote).

      loaded = megabyte_jax.load_trained("runs/default")
      logits = loaded.model.apply(loaded.variables, tokens)

  Returns:
    A `LoadedModel`: `.model` (the flax module), `.params` (its parameters at `.step`,
    default the latest checkpoint), `.config` (the saved config). Unpacking it as the
    tuple `(config, model, params, step)` still works, with a `DeprecationWarning`.

  A trainer may be saving into `workdir` meanwhile: when its retention deletes the step
  being read (the newest when it was listed), the then newest one is read instead (a `step`
  asked for that vanishes is a `CheckpointError`).

  Raises:
    ConfigError: no config in `workdir`. CheckpointError: no or unreadable checkpoint.
  """
  config = load_config(workdir)
  model, model_cfg = build_model(config.model)
  abstract = abstract_train_state(model, model_cfg.seq_len, make_optimizer(config.train))
  attempts = 0
  while True:
    try:
      params, chosen = _read_params(workdir, abstract, step)
      return LoadedModel(model=model, params=params, config=config, step=chosen,
                         legacy_order=TRAINED_ORDER)
    except CheckpointVanished:
      attempts += 1
      if step is not None or attempts >= LIST_ATTEMPTS:
        raise


def _read_params(workdir: PathLike, abstract: Any, step: Optional[int]) -> tuple[Any, int]:
  """`(parameters, step)` of `step` (default: the newest). A newest step that fails to read
  while a newer one has appeared meanwhile was deleted under the reader by a trainer's
  retention: `CheckpointVanished`."""
  checkpointer = Checkpointer(workdir, save_every=1, keep=None)
  try:
    newest = checkpointer.latest_step()
    if newest is None:
      raise CheckpointError(f"no checkpoint in {checkpointer.directory}: has training run?")
    chosen = newest if step is None else step
    try:
      return checkpointer.restore(abstract, chosen).params, int(chosen)
    except (CheckpointVanished, CheckpointAccessError):
      raise
    except CheckpointError as e:
      if step is None and _newest_step(workdir) != chosen:
        raise CheckpointVanished(f"the checkpoint of step {chosen} was replaced while it "
                                 f"was being read: {e}") from e
      raise
  finally:
    checkpointer.close()


def _newest_step(workdir: PathLike) -> Optional[int]:
  """The newest step listed now (None when none, or when the listing fails)."""
  try:
    checkpointer = Checkpointer(workdir, save_every=1, keep=None)
  except CheckpointError:
    return None
  try:
    return checkpointer.latest_step()
  finally:
    checkpointer.close()
