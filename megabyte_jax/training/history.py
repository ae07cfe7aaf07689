"""A run's config as trained: `config.json` and the history of what each resume changed.

    DIR/config.json            the config the run trains with now
    DIR/config_history.jsonl   one JSON object per field a resume changed:
                               {"step": 20, "field": "train.steps", "old": 20, "new": 25,
                                "time": "2026-12-01T10:00:00+00:00"}

A resume that changes the config (more `train.steps`, another learning rate, another mesh)
records each changed field with the step it took effect at before `config.json` is
rewritten, so the two files together describe the run as trained: `config_at(workdir, step)`
gives the config that was in force at any step. A run whose checkpoints have reached the
config's `train.steps` is finished (`finished_result`): training it again changes nothing.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Iterator, Optional

import ml_collections

from megabyte_jax.errors import MegabyteError
from megabyte_jax.flops import model_cost
from megabyte_jax.models import build_model
from megabyte_jax.training import checkpoint as checkpoint_lib
from megabyte_jax.training import workdir as workdir_lib
from megabyte_jax.training.result import TrainResult

HISTORY_FILE = "config_history.jsonl"


def history_path(workdir: workdir_lib.PathLike) -> str:
  """Path of the config history inside `workdir`."""
  return os.fspath(workdir_lib.as_path(workdir) / HISTORY_FILE)


def _flat(values: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """`(dotted field, value)` of a nested dict; tuples as lists (as JSON holds them)."""
  for key in sorted(values):
    value = values[key]
    if isinstance(value, dict):
      yield from _flat(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", json.loads(json.dumps(value))


def config_changes(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict
                   ) -> list[tuple[str, Any, Any]]:
  """`(dotted field, old value, new value)` of every field that differs between two
  configs (a field one of them lacks counts as None there), sorted by field."""
  before, after = dict(_flat(old.to_dict())), dict(_flat(new.to_dict()))
  return [(field, before.get(field), after.get(field))
          for field in sorted(set(before) | set(after))
          if before.get(field) != after.get(field)]


def read_history(workdir: workdir_lib.PathLike) -> list[dict]:
  """The recorded changes of `workdir`'s config, oldest first (none: an empty list). A line
  that is not a JSON object (a torn write) is skipped."""
  path = workdir_lib.as_path(history_path(workdir))
  if not path.exists():
    return []
  entries = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      entry = json.loads(line)
    except ValueError:
      continue
    if isinstance(entry, dict) and {"step", "field"} <= set(entry):
      entries.append(entry)
  return entries


def record_config(workdir: workdir_lib.PathLike, config: ml_collections.ConfigDict,
                  step: int) -> list[dict]:
  """Makes `DIR/config.json` hold `config`, the config training goes on with from `step`:
  first appends every field that differs from the saved `config.json` (if any) to the
  history, then rewrites `config.json` (both atomically). Returns the new history entries.

  Raises:
    OSError: a file cannot be written.
  """
  entries = []
  if workdir_lib.as_path(workdir_lib.config_path(workdir)).exists():
    saved = workdir_lib.load_config(workdir)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    entries = [{"step": int(step), "field": field, "old": old, "new": new, "time": now}
               for field, old, new in config_changes(saved, config)]
  if entries:
    kept = [json.dumps(e, sort_keys=True) for e in read_history(workdir)]
    kept += [json.dumps(e, sort_keys=True) for e in entries]
    workdir_lib.write_text_atomic(history_path(workdir), "\n".join(kept) + "\n")
  workdir_lib.save_config(workdir, config)
  return entries


def config_at(workdir: workdir_lib.PathLike, step: int) -> ml_collections.ConfigDict:
  """The config `workdir`'s run trained with at `step`: `config.json` with every change
  recorded after `step` undone (a change recorded at step s is in force from s on)."""
  values = workdir_lib.load_config(workdir).to_dict()
  for entry in reversed(read_history(workdir)):
    if entry["step"] > step:
      _set(values, entry["field"], entry["old"])
  return workdir_lib.config_from_json_values(values)


def _set(values: dict, field: str, value: Any) -> None:
  *sections, name = field.split(".")
  for section in sections:
    values = values.setdefault(section, {})
  if value is None and name not in values:
    return
  values[name] = value


def finished_step(workdir: workdir_lib.PathLike, config: ml_collections.ConfigDict,
                  latest_step: Optional[int]) -> Optional[int]:
  """The step `workdir`'s run has trained to, when that is `config.train.steps` or more and
  nothing is left to do; else None (a run to start, resume, or finish with its final
  evaluation).

  Finished: the newest checkpoint (`latest_step`) is past `train.steps`, or at it with the
  result record of that step written (the final evaluation and sample done).
  """
  steps = int(config.train.steps)
  if latest_step is None or latest_step < steps:
    return None
  if latest_step > steps:
    return latest_step
  result = _recorded_result(workdir)
  return latest_step if result is not None and result.step == latest_step else None


def _recorded_result(workdir: workdir_lib.PathLike) -> Optional[TrainResult]:
  try:
    return TrainResult.load(workdir)
  except MegabyteError:   # no record yet, or an unreadable one
    return None


def _latest_checkpoint(workdir: workdir_lib.PathLike) -> Optional[int]:
  """The newest checkpoint step in `workdir` (None: none): the largest step directory whose
  save finished (Orbax writes a step under a temporary name and renames it when done).
  Reads only, in every process alike (no collective)."""
  directory = workdir_lib.as_path(workdir) / checkpoint_lib.CHECKPOINT_SUBDIR
  try:
    steps = [int(path.name) for path in directory.iterdir() if path.name.isdigit()]
  except OSError:   # no checkpoint directory yet
    return None
  return max(steps, default=None)


def finished_result(workdir: workdir_lib.PathLike, config: ml_collections.ConfigDict
                    ) -> Optional[tuple[TrainResult, str]]:
  """When `workdir` holds a run that is finished for `config` (`finished_step`): the record
  of the invocation that finished it (`result.json`; one with the step and parameter count
  alone when that record is of an earlier step) and the line that says so. None otherwise.
  Reads only."""
  if not workdir_lib.as_path(workdir_lib.config_path(workdir)).exists():
    return None
  step = finished_step(workdir, config, _latest_checkpoint(workdir))
  if step is None:
    return None
  result = _recorded_result(workdir)
  if result is None or result.step != step:
    _, model_cfg = build_model(config.model)
    result = TrainResult(step=step, params=model_cost(model_cfg).params)
  steps = int(config.train.steps)
  asked = (f"of {steps}" if step == steps
           else f"(train.steps={steps} asks for no more: a run never goes back)")
  final = (f"; final eval {result.eval_bpb:.4f} bits/byte (result.json)"
           if result.eval_bpb is not None else "")
  line = (f"{os.fspath(workdir)} is finished: trained to step {step} {asked}{final}. Nothing "
          f"changed; --config.train.steps=N with N > {step} trains it further")
  return result, line
