"""The record of one training invocation: what `train_and_evaluate` returns and writes.

    result = train_and_evaluate(config, "runs/a")
    result.eval_bpb, result["eval_bpb"], dict(result)     # attribute, key, plain dict
    TrainResult.load("runs/a")                           # the same, from runs/a/result.json

Process 0 writes it to `DIR/result.json` at the end of every invocation that finishes
(not one stopped by a signal or an error: the file then still holds the previous one's),
through the work directory's path helpers, so remote work directories work too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator, Mapping, Optional

from megabyte_jax.errors import TrainingError
from megabyte_jax.training import workdir as workdir_lib
from megabyte_jax.training.metrics import plain_value

RESULT_FILE = "result.json"


@dataclasses.dataclass(frozen=True)
class TrainResult(Mapping):
  """What one call of `train_and_evaluate` did; also a read-only mapping of its fields
  (`result["eval_bpb"]`, `result.get("sample")`, `dict(result)`).

  Attributes:
    step: the step training stopped at (== `train.steps`).
    params: the number of model parameters.
    skipped_steps: steps of this invocation whose update was skipped (a non-finite loss or
      gradient).
    train_bpb: training bits per byte of the last logged window with a finite loss (None:
      no such window in this invocation).
    eval_bpb, eval_bytes: the final evaluation's bits per byte and scored bytes (None
      without `train.final_eval`).
    sample: the continuation sampled at the end, as text (None when
      `sample.num_bytes == 0`).
    compile_s: seconds of this invocation's first step, compilation included (None when
      no step ran, e.g. a finished run called again).
    train_s: `compile_s` plus the timed training windows: training alone, without
      checkpoint saves and evaluations (None when no step ran).
    bytes_per_s: training bytes per second over the timed windows, the first step left
      out (None when no step after the first ran).
    final_eval_s: seconds of the final evaluation (None without one).
    wall_s: seconds of the whole call, from reading the config to the sample.
  """

  step: int
  params: int
  skipped_steps: int = 0
  train_bpb: Optional[float] = None
  eval_bpb: Optional[float] = None
  eval_bytes: Optional[int] = None
  sample: Optional[str] = None
  compile_s: Optional[float] = None
  train_s: Optional[float] = None
  bytes_per_s: Optional[float] = None
  final_eval_s: Optional[float] = None
  wall_s: Optional[float] = None

  # The read-only Mapping: the fields, in order, as keys.
  def __getitem__(self, key: str) -> Any:
    if not isinstance(key, str) or key not in self._keys():
      raise KeyError(key)
    return getattr(self, key)

  def __iter__(self) -> Iterator[str]:
    return iter(self._keys())

  def __len__(self) -> int:
    return len(self._keys())

  @classmethod
  def _keys(cls) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))

  def to_json(self) -> str:
    """The record as one JSON object (non-finite numbers as null)."""
    return json.dumps({k: plain_value(v) for k, v in self.items()}, indent=2) + "\n"

  @classmethod
  def from_json(cls, text: str) -> "TrainResult":
    """Reads `to_json`'s text back; keys it does not know are ignored.

    Raises:
      ValueError: not a JSON object holding `step` and `params`.
    """
    values = json.loads(text)
    if not isinstance(values, dict) or "step" not in values or "params" not in values:
      raise ValueError("not a training result (a JSON object with step and params)")
    return cls(**{k: values[k] for k in cls._keys() if k in values})

  def save(self, workdir: workdir_lib.PathLike) -> str:
    """Writes the record to `DIR/result.json` (atomically; local or remote); returns the
    path."""
    path = result_path(workdir)
    workdir_lib.write_text_atomic(path, self.to_json())
    return path

  @classmethod
  def load(cls, workdir: workdir_lib.PathLike) -> "TrainResult":
    """The record of the last finished training invocation in `workdir`.

    Raises:
      TrainingError: no `result.json` there, or one that cannot be read.
    """
    path = result_path(workdir)
    try:
      return cls.from_json(workdir_lib.as_path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
      raise TrainingError(f"no {RESULT_FILE} in {os.fspath(workdir)!r}: no training "
                          f"invocation has finished there") from e
    except (OSError, ValueError, TypeError) as e:
      raise TrainingError(f"cannot read {path}: {' '.join(str(e).split())}") from e


def result_path(workdir: workdir_lib.PathLike) -> str:
  """Path of the result record inside `workdir`."""
  return os.fspath(workdir_lib.as_path(workdir) / RESULT_FILE)
