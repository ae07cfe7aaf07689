"""Metric logging: one JSON object per line in `metrics.jsonl`, plus TensorBoard events."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional

from megabyte_jax.errors import TrainingError

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
  """Converts numpy/jax scalars to Python numbers (non-finite floats become None)."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricWriter:
  """Appends metrics to `DIR/metrics.jsonl` and writes TensorBoard event files to `DIR/tb`.

  Each `write(step, metrics)` produces one JSON line `{"step": step, **metrics}`; numeric
  values also become TensorBoard scalars. Appending means a resumed run continues the file.
  With `enabled=False` (every process but the first of a multi-host run) it writes nothing.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True):
    self.enabled = enabled
    self._file: Optional[Any] = None
    self._tb: Optional[Any] = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, METRICS_FILE)
    try:
      self._file = open(self.path, "a", encoding="utf-8")
    except OSError as e:
      raise TrainingError(f"cannot open {self.path} for the metrics: {e.strerror or e}") from e
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records `metrics` at `step` (one JSON line; numeric values also to TensorBoard)."""
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _plain(v) for k, v in metrics.items()})
    try:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    except OSError as e:
      raise TrainingError(f"cannot write the metrics of step {step} to {self.path}: "
                          f"{e.strerror or e}; training stops, the checkpoints already "
                          f"written are untouched") from e
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, int(step))
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes both outputs."""
    if self._file is not None:
      try:
        self._file.close()
      except OSError:   # already reported by `write`, or nothing left to say
        pass
      self._file = None
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """Reads back every record of `DIR/metrics.jsonl` (an empty list if there is none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
