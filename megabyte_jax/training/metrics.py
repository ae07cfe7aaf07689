"""Metric logging: one JSON object per line in `metrics.jsonl`, plus TensorBoard events.

A remote work directory (`gs://...`) cannot be appended to: there the writer keeps the
file's lines and uploads the whole file at each write (metrics are small). TensorBoard
events need `tensorboardX` (the `[tensorboard]` extra) and a local work directory; without
either, only `metrics.jsonl` is written, with a warning.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Mapping, Optional

from etils import epath

from megabyte_jax.errors import TrainingError

METRICS_FILE = "metrics.jsonl"


def plain_value(value: Any) -> Any:
  """Converts numpy/jax scalars to Python numbers for JSON (non-finite floats become None)."""
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
    self._lines: Optional[list[str]] = None   # a remote file's lines, uploaded whole
    if not enabled:
      return
    workdir = os.fspath(workdir)
    remote = "://" in workdir
    self.path = _metrics_path(workdir)
    try:
      if remote:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        path = epath.Path(self.path)
        self._lines = path.read_text(encoding="utf-8").splitlines(True) if path.exists() else []
      else:
        os.makedirs(os.path.expanduser(workdir), exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
    except OSError as e:
      raise TrainingError(f"cannot open {self.path} for the metrics: {e.strerror or e}") from e
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:
        SummaryWriter = None
      if SummaryWriter is None or remote:
        why = ("a remote work directory" if remote else
               "tensorboardX is not installed: pip install 'megabyte-jax[tensorboard]'")
        print(f"warning: no TensorBoard events ({why}); metrics go to {self.path}",
              file=sys.stderr, flush=True)
      else:
        self._tb = SummaryWriter(os.path.join(os.path.expanduser(workdir), "tb"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records `metrics` at `step` (one JSON line; numeric values also to TensorBoard)."""
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: plain_value(v) for k, v in metrics.items()})
    try:
      if self._lines is not None:
        self._lines.append(json.dumps(record) + "\n")
        epath.Path(self.path).write_text("".join(self._lines), encoding="utf-8")
      else:
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


def _metrics_path(workdir: str) -> str:
  workdir = os.fspath(workdir)
  if "://" in workdir:
    return workdir.rstrip("/") + "/" + METRICS_FILE
  return os.path.join(os.path.expanduser(workdir), METRICS_FILE)


def read_metrics(workdir: str) -> list[dict]:
  """Reads back every record of `DIR/metrics.jsonl` (an empty list if there is none); the
  work directory may be remote."""
  path = epath.Path(_metrics_path(workdir))
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
          if line.strip()]
